"""``python -m diffusion.sample run=<run folder> sampler=ddim steps=50 n=64 seed=0``

Writes a PNG grid from the run's EMA weights (and, on request, the tensors and
the denoising chain as a grid and an animated GIF) into ``<run>/samples/``. A class-
conditional run samples ``labels`` (default: 0..K-1 in turn). Every option is checked, and
the output location probed, before the model is loaded.
``torchrun --nproc_per_node=N -m diffusion.sample ... n=10000 batch_size=500`` shares the
batches out among N processes; the images are the same as from one process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from diffusion import distributed as dist
from diffusion import viz
from diffusion.device import resolve_device, resolve_precision
from diffusion.guidance_options import (
    GuidanceOptions,
    build_guidance,
    check_guidance_options,
    load_options_classifier,
)
from diffusion.pipeline import DiffusionPipeline, compile_mode
from diffusion.rundir import load_config
from diffusion.sampling_args import (
    check_bool,
    check_cli_config,
    check_int,
    check_sampling,
    check_writable,
    is_int,
    is_stochastic,
    labels_option,
    run_command,
)


def check_sample_config(cfg: DictConfig) -> tuple[Path, torch.Tensor | None, GuidanceOptions]:
    """Every option checked, before the model is loaded: (where the grid goes, the labels,
    the guidance).

    Reads only the run's config.yaml (for T and model.num_classes), so a bad value costs no
    model load and no sampling, and an output location that cannot be written is found
    before minutes of sampling are spent rather than after.
    """
    check_cli_config(cfg, "sample")
    run_cfg = load_config(cfg.run)
    check_sampling(cfg.sampler, cfg.steps, cfg.eta,
                   instantiate(run_cfg.scheduler).num_train_timesteps,
                   n=cfg.n, batch_size=cfg.batch_size, timestep_spacing=cfg.timestep_spacing)
    guidance = check_guidance_options(cfg, run_cfg)
    labels = labels_option(cfg.labels, cfg.n, guidance.label_classes)
    if not is_int(cfg.seed):
        raise ValueError(f"seed must be an integer; got {cfg.seed!r}.")
    check_int("chain_frames", cfg.chain_frames, minimum=2)
    check_int("chain_rows", cfg.chain_rows)
    for key in ("chain", "save_tensors"):
        check_bool(key, cfg[key])
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    if cfg.compile:
        compile_mode(cfg.compile)
    grid = Path(cfg.out) if cfg.out else Path(cfg.run) / "samples" / f"{_stem(cfg)}.png"
    if grid.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"out must be an image file name such as grid.png; got {cfg.out!r}.")
    outputs = [grid]
    if cfg.save_tensors:
        outputs.append(grid.with_suffix(".pt"))
    if cfg.chain:
        outputs += [grid.with_name(f"{grid.stem}_chain.png"),
                    grid.with_name(f"{grid.stem}_chain.gif")]
    if dist.is_main():
        for path in outputs:
            check_writable(path, "pass out=<file.png> in a folder you can write")
    return grid, labels, guidance


def _stem(cfg: DictConfig) -> str:
    """The default file name: every setting that changes the images, so two samplings that
    differ in one of them do not overwrite each other (defaults left out: ddim-50_seed0)."""
    stem = f"{cfg.sampler}-{cfg.steps}"
    if cfg.eta:
        stem += f"-eta{cfg.eta:g}"
    if cfg.timestep_spacing != "trailing":  # the default is left out
        stem += f"-{cfg.timestep_spacing or 'trained'}"
    if is_stochastic(cfg.sampler, cfg.eta):  # the step noise is drawn per batch
        stem += f"-b{cfg.batch_size}"
    stem += f"_seed{cfg.seed}"
    if cfg.checkpoint:
        stem += f"_{Path(cfg.checkpoint).stem}"
    if cfg.labels == "all":
        stem += "_labelsall"
    elif cfg.labels is not None:
        labels = [cfg.labels] if is_int(cfg.labels) else list(cfg.labels)
        stem += "_labels" + "-".join(map(str, labels[:8])) + ("-etc" if len(labels) > 8 else "")
    if cfg.guidance_scale is not None:
        stem += f"_cfg{cfg.guidance_scale:g}"
        if cfg.guidance_rescale:
            stem += f"-rescale{cfg.guidance_rescale:g}"
    if cfg.classifier:
        stem += f"_classifier{Path(cfg.classifier).name}-s{cfg.classifier_scale or 1:g}"
    return stem


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample as ``cfg`` says; returns the paths written."""
    grid, labels, options = check_sample_config(cfg)
    pipe = DiffusionPipeline.from_run(cfg.run, checkpoint=cfg.checkpoint, device=cfg.device,
                                      precision=cfg.precision,
                                      compile=cfg.get("compile", False))
    noise = torch.randn((cfg.n, *pipe.sample_shape),
                        generator=torch.Generator().manual_seed(cfg.seed))
    out = pipe.sample_across_ranks(cfg.n, noise=noise, seed=cfg.seed, chunk_size=cfg.batch_size,
                                   steps=cfg.steps, sampler=cfg.sampler, eta=cfg.eta,
                                   timestep_spacing=cfg.timestep_spacing, y=labels,
                                   return_chain=cfg.chain, chain_frames=cfg.chain_frames,
                                   progress=True, guidance=build_guidance(
                                       options, options.scales[0], options.classifier_scales[0],
                                       load_options_classifier(options)))
    if not dist.is_main():
        return {}
    written = {"grid": viz.save_grid(out.images, grid)}
    if cfg.save_tensors:
        written["tensors"] = grid.with_suffix(".pt")
        torch.save(out.images, written["tensors"])
    if cfg.chain:
        rows = out.chain[: cfg.chain_rows]
        written["chain"] = viz.save_chain_grid(rows, grid.with_name(f"{grid.stem}_chain.png"),
                                               timesteps=out.chain_timesteps)
        written["gif"] = viz.save_chain_gif(rows, grid.with_name(f"{grid.stem}_chain.gif"))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


def main() -> None:
    """``python -m diffusion.sample ...``; see the module docstring."""
    run_command("sample", sample)


if __name__ == "__main__":
    main()
