"""Pictures of the diffusion process: sample grids, denoising chains (grid and
animated GIF, the GIF from ``pictures``), forward-process strips (of given images, or of a
dataset's with ``forward_figure``) and curves: loss, FID against network evaluations (NFE)
and against the guidance scale. Images are in [-1, 1]."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from diffusion.data import build_dataset, dataset_info, dataset_options, to_model_range
from diffusion.reporting.pictures import save_chain_gif  # noqa: F401 (part of this API)
from diffusion.schedulers import (
    CONTINUOUS_PRESETS,
    CONTINUOUS_SAMPLERS,
    DDPMScheduler,
    NoiseScheduler,
)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """A square-ish grid of ``images`` (n, C, H, W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(to_unit(images), path, nrow=nrow, padding=2)
    return path


def save_chain_grid(chain: torch.Tensor, path: str | Path,
                    timesteps: list[int] | None = None) -> Path:
    """Rows are samples, columns are reverse-process frames: chain is (n, frames, C, H, W).

    With ``timesteps`` (one per frame, -1 for the final x_0) the columns are labelled.
    """
    n, frames = chain.shape[:2]
    if timesteps is None:
        return save_grid(chain.reshape(n * frames, *chain.shape[2:]), path, nrow=frames)
    plt = _pyplot()
    grid = make_grid(to_unit(chain.reshape(n * frames, *chain.shape[2:])), nrow=frames,
                     padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(0.8 * frames + 0.5, 0.8 * n + 0.6), layout="constrained")
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if chain.shape[2] == 1 else None)
    side = chain.shape[-1] + 2
    ax.set_xticks([side * (i + 0.5) for i in range(frames)],
                  [f"t={t}" if t >= 0 else "x_0" for t in timesteps], fontsize=7, rotation=45)
    ax.set_yticks([])
    ax.set_title("Reverse process: x_T (left) to x_0 (right)", fontsize=9)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Figures with axes and labels (matplotlib, written as PNG)
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def forward_process_figure(images: torch.Tensor, schedulers: dict, path: str | Path,
                           columns: int = 11, seed: int = 0) -> Path:
    """Rows of data ``images`` noised to t = 0 ... T-1 (``columns`` evenly spaced steps), one
    block per scheduler in ``schedulers`` ({name: scheduler with ``add_noise``}), all from the
    same noise, and a panel with each schedule's signal level sqrt(alpha_bar_t)."""
    plt = _pyplot()
    n = images.shape[0]
    num_t = int(next(iter(schedulers.values())).config["num_train_timesteps"])
    ts = torch.linspace(0, num_t - 1, columns).round().long()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(len(schedulers) + 1, 1, layout="constrained",
                             figsize=(columns * 0.9, 0.9 * n * len(schedulers) + 2.5),
                             gridspec_kw={"height_ratios": [n] * len(schedulers) + [2.2]})
    side = images.shape[-1] + 2
    for ax, (name, sched) in zip(axes, schedulers.items(), strict=False):
        frames = torch.stack([sched.add_noise(images, noise, t.expand(n)) for t in ts], dim=1)
        grid = make_grid(to_unit(frames.reshape(n * columns, *images.shape[1:])), nrow=columns,
                         padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None)
        ax.set_xticks([side * (i + 0.5) for i in range(columns)], [f"t={int(t)}" for t in ts],
                      fontsize=7)
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=10)
    for name, sched in schedulers.items():
        alphas = sched.alphas_cumprod.double().sqrt().numpy()
        axes[-1].plot(range(len(alphas)), alphas, label=name)
    axes[-1].set_xlabel("t")
    axes[-1].set_ylabel(r"$\sqrt{\bar\alpha_t}$")
    axes[-1].legend(fontsize=8)
    axes[-1].grid(alpha=0.3)
    fig.suptitle("Forward process q(x_t | x_0)")
    return _save_figure(fig, path)


def forward_images(data: Mapping, n: int, split: str | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` images of ``split`` (None: the dataset's evaluation split; a seeded pick) in
    [-1, 1], of the dataset a data config (a mapping: ``name``, ``root``, ...) describes."""
    split = split or dataset_info(data["name"]).eval_split
    images = build_dataset(data["name"], root=data["root"], split=split,
                           image_size=data["image_size"], center_crop=data["center_crop"],
                           download=data["download"], **dataset_options(data)).preprocessed()[0]
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return to_model_range(images[pick])


def forward_figure(data, path: str | Path, schedules=("linear", "cosine"),
                   num_train_timesteps: int = 1000, images: int = 4, columns: int = 11,
                   split: str | None = None, seed: int = 0) -> Path:
    """The forward process on ``images`` data images, one block per beta schedule."""
    schedulers = {name: DDPMScheduler(num_train_timesteps=num_train_timesteps,
                                      beta_schedule=name) for name in schedules}
    return forward_process_figure(forward_images(data, images, split, seed), schedulers,
                                      path, columns=columns, seed=seed)


def plot_loss_curves(runs: dict[str, list[dict]], path: str | Path,
                     keys: tuple[str, ...] = ("train/loss", "val/loss")) -> Path:
    """Loss against step from ``metrics.jsonl`` records, one colour per run ({label: records});
    training loss solid, validation loss dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"train/loss": "-", "val/loss": "--"}
    for i, (label, records) in enumerate(runs.items()):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, styles.get(key, ":"), color=f"C{i}",
                        label=f"{label} {key.split('/')[0]}",
                        marker="o" if len(points) < 4 else None)
    return _finish_log_plot(fig, ax, path, "step", "loss")


def network_evaluations(sampler: str, steps: int, options: Mapping | None = None) -> int:
    """The network evaluations (NFE) of ``steps`` steps of ``sampler``: one a step, and
    ``order`` a step for a higher-order sampler but one its last, a plain Euler step
    (Heun: 2 * steps - 1); a continuous-time sampler's calls as it lists them with its
    ``options`` (a Langevin corrector's, Heun's, the denoising one)."""
    if getattr(CONTINUOUS_SAMPLERS.get(sampler), "adaptive", False):
        raise ValueError(f"sampler={sampler} picks its own steps: its NFE is measured "
                         f"(an evaluation's \"nfe\"), not computed from the step count.")
    if sampler in CONTINUOUS_SAMPLERS:
        built = CONTINUOUS_SAMPLERS[sampler].over(
            DDPMScheduler(), **{**CONTINUOUS_PRESETS[sampler], **(options or {})})
        built.set_timesteps(steps)
        return len(built.timesteps)
    order = getattr(NoiseScheduler.SAMPLERS.get(sampler), "order", 1)
    return order * (steps - 1) + 1


def guidance_sweeps(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """``eval.json`` entries split in two: (those of no guidance sweep, those of one). A
    guidance sweep is two or more classifier-free guidance scales with the same sampler,
    spacing, steps, n and classifier scale, drawn against the scale rather than the NFE."""
    def setting(e: dict) -> tuple:
        return (e["sampler"], e.get("timestep_spacing") or "", e["steps"], e["n"],
                e.get("classifier_scale"))

    scales: dict[tuple, set] = {}
    for e in entries:
        if e.get("guidance_scale") is not None:
            scales.setdefault(setting(e), set()).add(e["guidance_scale"])
    swept = [len(scales.get(setting(e), ())) > 1 and e.get("guidance_scale") is not None
             for e in entries]
    return ([e for e, s in zip(entries, swept, strict=True) if not s],
            [e for e, s in zip(entries, swept, strict=True) if s])


def _curve(entry: dict, x: str) -> tuple[tuple, float]:
    """(the line an entry belongs to: what it was sampled with but ``x``; its x value)."""
    guidance, classifier = entry.get("guidance_scale"), entry.get("classifier_scale")
    spacing = entry.get("timestep_spacing") or ""
    if x == "guidance_scale":
        return (entry["sampler"], spacing, entry["n"], entry["steps"], None, classifier), \
            guidance
    nfe = entry.get("nfe")  # measured, for a sampler that picks its own steps
    return (entry["sampler"], spacing, entry["n"], None, guidance, classifier), \
        nfe if nfe is not None else network_evaluations(entry["sampler"], entry["steps"],
                                                         entry.get("sampler_options"))


def _curve_name(run: str, key: tuple, spacings: dict[str, set]) -> str:
    sampler, spacing, n, steps, guidance, classifier = key
    name = f"{run} {sampler} {spacing}" if len(spacings[sampler]) > 1 and spacing \
        else f"{run} {sampler}"
    name += f"-{steps}" if steps is not None else ""
    name += f" cfg {guidance:g}" if guidance is not None else ""
    name += f" classifier {classifier:g}" if classifier is not None else ""
    return f"{name} (n={n})"


def eval_curves(runs: dict[str, list[dict]], x: str = "nfe",
                y: str = "fid") -> dict[str, dict[str, list[tuple[float, float]]]]:
    """The lines of a plot of ``eval.json`` entries ({run label: entries}): {run label:
    {line label: [(x, y), ...] by x}}. ``x="nfe"``: against network evaluations
    (``network_evaluations``), one line per sampler, spacing, n and guidance; ``x=
    "guidance_scale"``: against the guidance scale, one line per sampler, spacing, n and
    steps (unguided entries left out). Of entries at one point, the newest; entries without
    a number for ``y`` are left out."""
    curves = {}
    for run, entries in runs.items():
        lines: dict[tuple, dict[float, float]] = {}
        for e in sorted(entries, key=lambda e: e.get("time", "")):
            key, at = _curve(e, x)
            if at is not None and isinstance(e.get(y), int | float):
                lines.setdefault(key, {})[at] = e[y]
        spacings: dict[str, set] = {}
        for key in lines:
            spacings.setdefault(key[0], set()).add(key[1])
        curves[run] = {_curve_name(run, key, spacings): sorted(points.items())
                       for key, points in sorted(lines.items(), key=lambda kv: repr(kv[0]))}
    return curves


def _draw_curves(ax, curves: dict[str, dict[str, list[tuple[float, float]]]]) -> set[float]:
    """One colour per run, one line style per line of a run; returns the x values drawn."""
    xs = set()
    for i, lines in enumerate(curves.values()):
        for j, (name, points) in enumerate(lines.items()):
            ax.plot(*zip(*points, strict=True), marker="o", color=f"C{i}",
                    linestyle=["-", "--", ":", "-."][j % 4], label=name)
            xs |= {p[0] for p in points}
    return xs


def _floors(ax, runs: dict[str, list[dict]]) -> None:
    floors = {e["n"]: e["floor"] for entries in runs.values() for e in entries
              if isinstance(e.get("floor"), int | float)}
    for n, floor in sorted(floors.items()):
        _floor_line(ax, floor, f"data floor, n={n}: {floor:.2f}")


def _mark_x(ax, xs: set[float]) -> None:
    """Ticks at the values drawn, written plainly (not 2 x 10^0), when there are few."""
    if 0 < len(xs) <= 12:
        ax.set_xticks(sorted(xs), [f"{v:g}" for v in sorted(xs)])
        ax.set_xticks([], minor=True)


def plot_fid_vs_steps(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """FID against network evaluations (NFE: the steps of a one-evaluation sampler, 2 *
    steps - 1 of Heun's), one line per (run, sampler, n, guidance) from ``eval.json``
    entries ({label: entries}), and the data floor at each n as a grey dotted line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_xscale("log")
    _mark_x(ax, _draw_curves(ax, eval_curves(runs, "nfe")))
    _floors(ax, runs)
    return _finish_log_plot(fig, ax, path, "network evaluations (NFE)", "FID")


def plot_fid_vs_guidance(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """FID against the classifier-free guidance scale, one line per (run, sampler, steps, n)
    from ``eval.json`` entries ({label: entries}), with the data floor; beside it the class
    accuracy of the samples where it was measured (guidance trades one for the other)."""
    plt = _pyplot()
    accuracy = eval_curves(runs, "guidance_scale", "class_accuracy")
    panels = 2 if any(accuracy.values()) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 1.5, 4), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    _mark_x(ax, _draw_curves(ax, eval_curves(runs, "guidance_scale")))
    _floors(ax, runs)
    ax.set_title("FID (lower is better)", fontsize=9)
    if panels == 2:
        right = axes[0, 1]
        _mark_x(right, _draw_curves(right, accuracy))
        right.set(xlabel="guidance scale w", ylabel="class accuracy of the samples",
                  ylim=(0, 1.02))
        right.set_title("Samples of the requested class (higher is better)", fontsize=9)
        right.grid(alpha=0.3)
    return _finish_log_plot(fig, ax, path, "guidance scale w", "FID")


def plot_fid_during_training(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """The trainer's periodic FID against the training step, one line per run ({label:
    metrics.jsonl records with ``eval/fid``}), and the data floor as a grey dotted line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    floors = set()
    for i, (label, records) in enumerate(runs.items()):
        points = sorted((r["step"], r["eval/fid"]) for r in records)
        ax.plot(*zip(*points, strict=True), marker="o", color=f"C{i}", label=label)
        floors |= {r["eval/fid_floor"] for r in records
                   if isinstance(r.get("eval/fid_floor"), int | float)}
    for floor in sorted(floors)[:1]:
        _floor_line(ax, floor, f"data floor: {floor:.2f}")
    return _finish_log_plot(fig, ax, path, "training step", "FID")


def _floor_line(ax, floor: float, text: str) -> None:
    ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
    ax.text(0.01, floor, text, fontsize=7, color="grey", va="bottom",
            transform=ax.get_yaxis_transform())


def _finish_log_plot(fig, ax, path: str | Path, xlabel: str, ylabel: str) -> Path:
    """Labels, a log y axis, a grid and the legend; the figure saved to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def side_by_side(images: dict[str, str | Path], path: str | Path, width: float = 3.2) -> Path:
    """Image files (e.g. sample grids) in one row, each titled by its key."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(width * len(images), width + 0.4),
                             squeeze=False)
    for ax, (title, file) in zip(axes[0], images.items(), strict=True):
        ax.imshow(Image.open(file).convert("RGB"))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _save_figure(fig, path)
