"""``python -m diffusion.edit run=<run folder> task=img2img|inpaint|invert|interpolate
input=<image file, folder or data split> ...``

Edits images with a trained model (``DiffusionPipeline``'s ``img2img``, ``inpaint``,
``invert`` and ``interpolate``) and writes a before/after grid into ``<run>/edits/``: one row
per input image (input, [mask,] results), under a header naming the task, its settings and each
column, with a ``.json`` beside it holding the command that
repeats it and what was measured (the known-region error of inpainting, the reconstruction
error of inversion), and on request the tensors. Every option is checked, and the inputs and
the output location read or probed, before the model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffusion.checks import (
    check_image_file,
    check_writable,
)
from diffusion.commands.launcher import launch
from diffusion.config.options import TASK_KEYS, check_edit_options
from diffusion.editing import mask_option
from diffusion.editing.sources import read_input
from diffusion.errors import ConfigError
from diffusion.processes.base import Process
from diffusion.reporting.pictures import save_labelled_grid
from diffusion.runs.load import newest_checkpoint
from diffusion.runs.records import portable_arg, shell_word
from diffusion.sampling.checks import labels_option, labels_tag
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec


def check_edit_config(cfg: DictConfig):
    """Every option, the inputs and the mask, before the model is loaded: (grid path, images,
    mask or None, labels or None, the sampler's spec)."""
    run = check_edit_options(cfg)
    run_cfg, spec = run.run_cfg, run.spec
    images = read_input(cfg.input, cfg.n, cfg.start, run_cfg.data, cfg.data_root)
    if cfg.task == "interpolate" and (len(images) < 2 or len(images) % 2):
        raise ConfigError(f"interpolate takes its input images in pairs (the first with the "
                          f"second, and so on); {cfg.input} gave {len(images)}: pass a folder "
                          "or a data split with an even n >= 2.")
    size = (int(run_cfg.data.image_size),) * 2
    mask = None
    if cfg.task == "inpaint":  # a PNG's one mask serves every image
        mask = mask_option(cfg.mask, len(images), size, cfg.seed).expand(len(images), -1, -1, -1)
    labels = labels_option(cfg.labels, len(images), run_cfg.model.get("num_classes"))
    grid = Path(cfg.out) if cfg.out else Path(cfg.run) / "edits" / f"{_stem(cfg)}.png"
    check_image_file("out", grid)
    for path in (grid, grid.with_suffix(".json"), grid.with_suffix(".pt")):
        check_writable(path, "pass out=<file.png> in a folder you can write")
    return grid, images, mask, labels, spec


def _stem(cfg: DictConfig) -> str:
    """The default file name: the task, the input and every setting the images depend on
    (img2img-test0-8-s0.6-x4-ddim-50_seed0), so that two edits that differ in one of them do
    not overwrite each other."""
    source = Path(str(cfg.input)).stem or "input"
    parts = [cfg.task, f"{source}{cfg.start}-{cfg.start + cfg.n}"]
    if cfg.task == "inpaint":
        parts.append(Path(str(cfg.mask)).stem)
        parts.append(f"j{cfg.jump_length}x{cfg.jump_n_sample}" if cfg.jump_n_sample > 1
                     else "plain")
    if cfg.task == "img2img":
        parts.append(f"s{cfg.strength:g}")
    if "samples" in TASK_KEYS[cfg.task]:
        parts.append(f"x{cfg.samples}")
    if cfg.task == "interpolate":
        parts.append(f"f{cfg.frames}")
    spec = SamplerSpec.from_config(cfg.sampler)
    parts += [spec.name, str(spec.steps)]
    if spec.eta:
        parts.append(f"eta{spec.eta:g}")
    parts += [f"{k}{v}" for k, v in spec.changed_options().items()]
    if spec.timestep_spacing != "trailing":
        parts.append(str(spec.timestep_spacing or "trained"))
    if cfg.fixed_point and cfg.task in ("invert", "interpolate"):
        parts.append(f"fp{cfg.fixed_point}")
    draws_noise = cfg.task == "inpaint" or (cfg.task == "img2img" and spec.stochastic)
    if draws_noise and cfg.n * cfg.samples > cfg.batch_size:  # its steps' noise is per batch
        parts.append(f"b{cfg.batch_size}")
    stem = "-".join(parts) + f"_seed{cfg.seed}"
    if cfg.checkpoint:
        stem += f"_{Path(cfg.checkpoint).stem}"
    if cfg.data_root:
        stem += f"_root-{Path(str(cfg.data_root)).name}"
    return stem + labels_tag(cfg.labels)


def command(cfg: DictConfig, checkpoint: Path | None) -> str:
    """The command line that repeats this edit: the checkpoint used (not "the newest", which
    moves on) and every setting the images depend on, stated even where it is the default."""
    keys = ("run", "task", "input", "n", "start", *TASK_KEYS[cfg.task], "seed", "batch_size",
            "labels", "data_root")
    args = [f"{k}={cfg[k]}" for k in keys if cfg[k] is not None]
    args += [f"sampler={cfg.sampler.name}"] + [f"sampler.{k}={'null' if v is None else v}"
                                               for k, v in cfg.sampler.items() if k != "name"]
    if checkpoint is not None:
        args.insert(1, f"checkpoint={checkpoint}")
    return " ".join(["python", "-m", "diffusion.edit",
                     *(shell_word(portable_arg(a)) for a in args)])


def _grey(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input with its filled-in region shown mid-grey (0 in [-1, 1])."""
    return images * (1 - mask)


def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """Each image (or mask, or label) ``k`` times in a row: ``samples`` results per input."""
    return None if x is None else x.repeat_interleave(k, dim=0)


def _common(cfg: DictConfig) -> dict:
    sampler = cfg.sampler
    return dict(steps=sampler.steps, timestep_spacing=sampler.timestep_spacing,
                batch_size=cfg.batch_size)


def _results(k: int) -> list[str]:
    return ["result"] if k == 1 else [f"result {i + 1}" for i in range(k)]


def _img2img(cfg, pipe, images, mask, labels):
    """(grid rows (rows, per_row, C, H, W), tensors to save, measurements, column headers)
    of each task."""
    k = cfg.samples
    out = pipe.img2img(_repeat(images, k), strength=cfg.strength,
                       sampler=SamplerSpec.from_config(cfg.sampler).build(pipe.scheduler),
                       generator=torch.Generator().manual_seed(cfg.seed),
                       y=_repeat(labels, k), **_common(cfg)).images
    rows = torch.cat([images[:, None], out.reshape(len(images), k, *images.shape[1:])], dim=1)
    return rows, {"inputs": images, "results": out}, {}, ["input", *_results(k)]


def _inpaint(cfg, pipe, images, mask, labels):
    k = cfg.samples
    spec = SamplerSpec.from_config(cfg.sampler)
    continuous = isinstance(pipe.scheduler, Process)  # Song et al.'s replacement, not RePaint
    options = ({"sampler": spec.build(pipe.scheduler)} if continuous else
               {"jump_length": cfg.jump_length, "jump_n_sample": cfg.jump_n_sample,
                "eta": spec.eta if spec.name == "ddim" else 1.0})
    out = pipe.inpaint(_repeat(images, k), _repeat(mask, k), **options,
                       generator=torch.Generator().manual_seed(cfg.seed), y=_repeat(labels, k),
                       **_common(cfg)).images
    known_error = ((out - _repeat(images, k)) * (1 - _repeat(mask, k))).abs().max().item()
    rows = torch.cat([images[:, None], _grey(images, mask)[:, None],
                      out.reshape(len(images), k, *images.shape[1:])], dim=1)
    return rows, {"inputs": images, "masks": mask, "results": out}, {
        "known_region_max_error": known_error}, ["input", "masked", *_results(k)]


def _invert(cfg, pipe, images, mask, labels):
    x_T = pipe.invert(images, fixed_point=cfg.fixed_point, y=labels, **_common(cfg)).latents
    back = pipe.regenerate(x_T, y=labels, **_common(cfg)).images
    mse = (back - images).pow(2).flatten(1).mean(1)
    rows = torch.stack([images, (x_T / 3).clamp(-1, 1), back], dim=1)  # x_T shown at +-3 std
    return rows, {"inputs": images, "x_T": x_T, "results": back}, {
        "mse": mse.mean().item(), "mse_per_image": mse.tolist()}, [
        "input", "x_T (÷3)", "regenerated"]


def _interpolate(cfg, pipe, images, mask, labels):
    """Inputs 0 and 1, 2 and 3, ...: each pair inverted and the arc between decoded."""
    x_T = pipe.invert(images, fixed_point=cfg.fixed_point, y=labels, **_common(cfg)).latents
    rows = []
    for a in range(0, len(images) - 1, 2):
        y = None if labels is None else labels[a].repeat(cfg.frames)
        frames = pipe.interpolate(x_T[a], x_T[a + 1], cfg.frames, y=y, **_common(cfg)).images
        rows.append(torch.cat([images[a:a + 1], frames, images[a + 1:a + 2]]))
    rows = torch.stack(rows)
    weights = [f"{w:.2g}" for w in torch.linspace(0, 1, cfg.frames).tolist()]
    return rows, {"inputs": images, "x_T": x_T, "results": rows[:, 1:-1]}, {}, [
        "input A", *weights, "input B"]


def _title(cfg: DictConfig, measured: dict) -> str:
    """The grid's header: the task, its settings and what was measured."""
    spec = SamplerSpec.from_config(cfg.sampler)
    parts = [cfg.task]
    if cfg.task == "img2img":
        parts.append(f"strength {cfg.strength:g}")
    if cfg.task == "inpaint":
        parts.append(f"mask {Path(str(cfg.mask)).stem}")
        if cfg.jump_n_sample > 1:
            parts.append(f"RePaint jumps {cfg.jump_length}x{cfg.jump_n_sample}")
    if cfg.task == "interpolate":
        parts.append("slerp between inverted x_T")
    parts.append(f"{spec.name}-{spec.steps}" if cfg.task in ("img2img", "inpaint")
                 else f"ddim-{spec.steps}")
    if "mse" in measured:
        parts.append(f"MSE {measured['mse']:.3g}")
    return " · ".join(parts)


TASK_RUNS = {"img2img": _img2img, "inpaint": _inpaint, "invert": _invert,
             "interpolate": _interpolate}


def edit(cfg: DictConfig) -> dict[str, Path]:
    """Edit as ``cfg`` says; returns the paths written."""
    grid, images, mask, labels, _ = check_edit_config(cfg)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.run)
    pipe = DiffusionPipeline.from_run(cfg.run, checkpoint=checkpoint, device=cfg.device,
                                      precision=cfg.precision)
    rows, tensors, measured, headers = TASK_RUNS[cfg.task](cfg, pipe, images, mask, labels)
    written = {"grid": save_labelled_grid(rows.flatten(0, 1), grid, rows.shape[1],
                                          title=_title(cfg, measured), column_labels=headers)}
    record = {"command": command(cfg, checkpoint), "task": cfg.task, **measured}
    written["record"] = grid.with_suffix(".json")
    written["record"].write_text(json.dumps(record, indent=2) + "\n")
    if cfg.save_tensors:
        written["tensors"] = grid.with_suffix(".pt")
        torch.save(tensors, written["tensors"])
    for key, value in measured.items():
        if not isinstance(value, list):
            print(f"{key}: {value:.3g}")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


def main() -> None:
    """``python -m diffusion.edit ...``; see the module docstring."""
    launch("edit", edit, precheck=lambda cfg: [check_edit_config(cfg)[0]])


if __name__ == "__main__":
    main()
