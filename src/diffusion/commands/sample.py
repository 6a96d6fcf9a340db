"""``python -m diffusion.sample run=<run folder> sampler=ddim sampler.steps=50 n=64 seed=0``

Writes a PNG grid from the run's EMA weights (and, on request, the tensors and
the denoising chain as a grid and an animated GIF) into ``<run>/samples/``. ``sampler`` is
the config group ``conf/sampler/<name>.yaml`` (``diffusion.sampling.sampler``). A class-
conditional run samples ``labels`` (default: 0..K-1 in turn). Every option is checked, and
the output location probed, before the model is loaded.
``torchrun --nproc_per_node=N -m diffusion.sample ... n=10000 batch_size=500`` shares the
batches out among N processes; the images are the same as from one process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from diffusion.checks import check_image_file, check_writable
from diffusion.commands.launcher import launch
from diffusion.config.control import check_control_options, control_batch
from diffusion.config.guidance import (
    GuidanceOptions,
    build_guidance,
    load_options_classifier,
)
from diffusion.config.options import check_sample_options
from diffusion.reporting import figures as viz
from diffusion.runtime import distributed as dist
from diffusion.sampling.cascade import check_cascade_options, stage_list, upsample
from diffusion.sampling.checks import SAMPLERS, labels_tag
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec


def check_sample_config(cfg: DictConfig) -> tuple[Path, torch.Tensor | None, SamplerSpec, int,
                                                  GuidanceOptions]:
    """Every option checked, before the model is loaded: (where the grid goes, the labels,
    the sampler, its step count, the guidance).

    Reads only the run's config.yaml (for T and model.num_classes), so a bad value costs no
    model load and no sampling, and an output location that cannot be written is found
    before minutes of sampling are spent rather than after.
    """
    run, guidance, labels = check_sample_options(cfg)
    check_cascade_options(cfg, run.run_cfg)
    check_control_options(cfg, run.run_cfg)
    spec, steps = run.spec, run.steps[0]
    grid = (Path(cfg.out) if cfg.out
            else Path(cfg.run) / "samples" / f"{_stem(cfg, spec, steps)}.png")
    check_image_file("out", grid)
    outputs = [grid]
    if cfg.save_tensors:
        outputs.append(grid.with_suffix(".pt"))
    if cfg.chain:
        outputs += list(_chain_paths(cfg, grid))
    if dist.is_main():
        for path in outputs:
            check_writable(path, "pass out=<file.png> in a folder you can write")
    return grid, labels, spec, steps, guidance


def _chain_paths(cfg: DictConfig, grid: Path) -> tuple[Path, Path]:
    """The chain's grid and GIF beside ``grid``, named with its frames and rows
    (``ddim-50_n16_seed0_chain-f10-r8.png``)."""
    stem = f"{grid.stem}_chain-f{cfg.chain_frames}-r{min(cfg.chain_rows, cfg.n)}"
    return grid.with_name(f"{stem}.png"), grid.with_name(f"{stem}.gif")


def _stem(cfg: DictConfig, spec: SamplerSpec, steps: int) -> str:
    """The default file name: every setting that changes the images, so two samplings that
    differ in one of them do not overwrite each other: the sampler, its steps and changed
    options, the number of images and the seed always (ddim-50_n64_seed0), the rest when set."""
    stem = f"{spec.name}-{steps}"
    for key, value in spec.changed_options().items():
        stem += f"-{key}{value}"
    if spec.eta:
        stem += f"-eta{spec.eta:g}"
    # the default spacing is left out, and a continuous-time sampler has none to name
    spaced = "timestep_spacing" in SAMPLERS[spec.name].config_keys()
    if spaced and spec.timestep_spacing != "trailing":
        stem += f"-{spec.timestep_spacing or 'trained'}"
    if spec.stochastic:  # the step noise is drawn per batch
        stem += f"-b{cfg.batch_size}"
    stem += f"_n{cfg.n}_seed{cfg.seed}"
    if cfg.checkpoint:
        stem += f"_{Path(cfg.checkpoint).stem}"
    stem += labels_tag(cfg.labels)
    if cfg.guidance_scale is not None:
        stem += f"_cfg{cfg.guidance_scale:g}"
        if cfg.guidance_rescale:
            stem += f"-rescale{cfg.guidance_rescale:g}"
    if cfg.classifier:
        scale = 1 if cfg.classifier_scale is None else cfg.classifier_scale
        stem += f"_classifier{Path(cfg.classifier).name}-s{scale:g}"
    stages = stage_list(cfg.get("upsample"))
    if stages:
        stem += "_up-" + "-".join(Path(stage).name for stage in stages)
        if cfg.get("low_res_level") is not None:
            stem += f"-level{cfg.low_res_level:g}"
    if cfg.get("control_image") is not None:
        stem += f"_control-{Path(str(cfg.control_image)).stem}"
        if cfg.get("control_scale") is not None:
            stem += f"-s{cfg.control_scale:g}"
    return stem


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample as ``cfg`` says; returns the paths written."""
    grid, labels, spec, steps, options = check_sample_config(cfg)
    pipe = DiffusionPipeline.from_run(cfg.run, checkpoint=cfg.checkpoint, device=cfg.device,
                                      precision=cfg.precision,
                                      compile=cfg.get("compile", False))
    noise = torch.randn((cfg.n, *pipe.sample_shape),
                        generator=torch.Generator().manual_seed(cfg.seed))
    control, _, sources = control_batch(cfg, pipe)
    out = pipe.sample_across_ranks(cfg.n, noise=noise, seed=cfg.seed, chunk_size=cfg.batch_size,
                                   steps=steps, sampler=spec.build(pipe.scheduler), y=labels,
                                   return_chain=cfg.chain, chain_frames=cfg.chain_frames,
                                   progress=True, guidance=build_guidance(
                                       options, options.scales[0], options.classifier_scales[0],
                                       load_options_classifier(options)),
                                   control=control, control_scale=cfg.get("control_scale"))
    images = out.images
    stages = [DiffusionPipeline.from_run(stage, device=cfg.device, precision=cfg.precision)
              for stage in stage_list(cfg.get("upsample"))]
    if stages:  # the cascade: the base's images through each super-resolution stage
        images = upsample(images, stages, cfg.seed, cfg.batch_size, cfg.get("low_res_level"),
                          progress=True)
    if not dist.is_main():
        return {}
    written = {"grid": viz.save_grid(images, grid)}
    if control is not None:  # the controls and the images they come from, in the grid's order
        written["control"] = viz.save_grid(pipe.control.preview(control, images.shape[1]),
                                           grid.with_name(f"{grid.stem}_control.png"))
        written["control_source"] = viz.save_grid(sources,
                                                  grid.with_name(f"{grid.stem}_source.png"))
    if cfg.save_tensors:
        written["tensors"] = grid.with_suffix(".pt")
        torch.save(images, written["tensors"])
    if cfg.chain:
        rows = out.chain[: cfg.chain_rows]
        chain_png, chain_gif = _chain_paths(cfg, grid)
        written["chain"] = viz.save_chain_grid(rows, chain_png, timesteps=out.chain_timesteps)
        written["gif"] = viz.save_chain_gif(rows, chain_gif, timesteps=out.chain_timesteps)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


def main() -> None:
    """``python -m diffusion.sample ...``; see the module docstring."""
    launch("sample", sample, precheck=lambda cfg: [check_sample_config(cfg)[0]])


if __name__ == "__main__":
    main()
