"""``oracle.md``, ``oracle.json`` and ``oracle.png`` from a ``diffusion.samplers_oracle`` run.

The Markdown holds one table per (spacing, prediction type): rows sampler x NFE, columns
data set x schedule, each cell the sliced Wasserstein-2 distance and its ratio to the floor;
then the ring's mode coverage, the floors, the full command and the machine. A section
``## Reading`` written by hand into an existing ``oracle.md`` is kept when the file is
rewritten (a rerun replaces the numbers, not the commentary on them).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from pathlib import Path

import torch

from diffusion.runs.records import cpu_model, portable_path
from diffusion.sampling.checks import SAMPLERS

READING = "\n## Reading"


def command(config: dict, out: str) -> str:
    """The command line that reproduces ``config``, every option spelled out."""
    lists = ("samplers", "nfe", "datasets", "schedules", "spacings", "prediction_types",
             "tolerances")
    words = ["python", "-m", "diffusion.samplers_oracle"]
    adaptive = any(getattr(SAMPLERS.get(s), "adaptive", False) for s in config["samplers"])
    for key in ("samplers", "nfe", "n", "seed", "datasets", "schedules", "spacings",
                "prediction_types", "projections", "floor_repeats", "eta",
                *(["tolerances"] if adaptive and "tolerances" in config else [])):
        value = config[key]
        words += [f"--{key.replace('_', '-')}",
                  ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
                  if key in lists else str(value)]
    if config["clip_sample"]:
        words.append("--clip-sample")
    words += ["--out", portable_path(out, "<out>")]
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(words)


def machine() -> dict:
    """The machine as facts: CPU model, cores, threads, software versions."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "system": platform.system()}


def _groups(runs: list[dict], *keys: str) -> list[tuple]:
    """The distinct values of ``keys`` over ``runs``, in the order they first appear (a key a
    run lacks, ``tolerance`` in records from before adaptive samplers, is None)."""
    return list(dict.fromkeys(tuple(r.get(k) for k in keys) for r in runs))


def _tables(result: dict) -> list[str]:
    """Per (spacing, prediction type): the distance table, then the mode-statistics table."""
    runs, lines = result["runs"], []
    columns = _groups(runs, "dataset", "schedule")
    for spacing, prediction in _groups(runs, "spacing", "prediction_type"):
        chosen = [r for r in runs if (r["spacing"], r["prediction_type"]) == (spacing, prediction)]
        lines += [f"### spacing `{spacing}`, `{prediction}` model", ""]
        lines += _table(chosen, columns, lambda r: f"{r['sw']:.4f} ({r['sw_over_floor']:.2f}×)")
        lines += ["", "Modes covered, share near a mode (2-D only), spread:", ""]
        lines += _table(chosen, columns, lambda r: _modes(r["modes"]))
        lines.append("")
    return lines


def _table(runs: list[dict], columns: list[tuple], cell) -> list[str]:
    """Rows sampler x NFE, a column per (data set, schedule), ``cell(run)`` in each."""
    head = ["sampler", "NFE"] + [f"{d} · {s}" for d, s in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for sampler, target, tolerance in _groups(runs, "sampler", "target_nfe", "tolerance"):
        cells = {(r["dataset"], r["schedule"]): r for r in runs
                 if (r["sampler"], r["target_nfe"], r.get("tolerance")) ==
                 (sampler, target, tolerance)}
        nfes = sorted({r["nfe"] for r in cells.values()})
        label = sampler if tolerance is None else f"{sampler} (tol {tolerance:g})"
        row = [label, "/".join(map(str, nfes))]
        lines.append("| " + " | ".join(row + [cell(cells[c]) if c in cells else ""
                                              for c in columns]) + " |")
    return lines


def _modes(stats: dict) -> str:
    near = f"{100 * stats['near']:.1f}%, " if stats["near_expected"] > 0.5 else ""
    return f"{stats['covered']}/{stats['modes']}, {near}{stats['spread']:.3f}"


def _summary(result: dict) -> list[str]:
    """Per sampler, over every setting of the run: its ratio to the floor and its mode spread
    at its largest NFE, and its distance at 10 model calls over that at 100."""
    lines = []
    for (sampler,) in _groups(result["runs"], "sampler"):
        mine = [r for r in result["runs"] if r["sampler"] == sampler]
        if mine[0].get("tolerance") is not None:  # adaptive: at its tightest tolerance
            tightest = min(r["tolerance"] for r in mine)
            top_runs = [r for r in mine if r["tolerance"] == tightest]
            nfes = [r["nfe"] for r in top_runs]
            at = f"tol {tightest:g} (NFE {min(nfes)} to {max(nfes)})"
        else:
            top = max(r["target_nfe"] for r in mine)
            top_runs = [r for r in mine if r["target_nfe"] == top]
            at = f"NFE {top}"
        ratios = [r["sw_over_floor"] for r in top_runs]
        spreads = [r["modes"]["spread"] for r in top_runs]
        text = (f"- `{sampler}`: at {at}, {min(ratios):.2f}× to {max(ratios):.2f}× "
                f"the floor, mode spread {min(spreads):.3f} to {max(spreads):.3f}")
        pairs, excess = [], []
        for key in _groups(mine, "dataset", "schedule", "spacing", "prediction_type"):
            by_nfe = {r["target_nfe"]: r for r in mine
                      if (r["dataset"], r["schedule"], r["spacing"], r["prediction_type"]) == key}
            if 10 in by_nfe and 100 in by_nfe:
                pairs.append(by_nfe[10]["sw"] / by_nfe[100]["sw"])
                if by_nfe[100]["excess"] > 0:
                    excess.append(by_nfe[10]["excess"] / by_nfe[100]["excess"])
        if pairs:
            text += f"; distance at NFE 10 / at NFE 100: {min(pairs):.1f} to {max(pairs):.1f}"
        if excess:
            text += (f" (of the excess over the floor, sqrt(SW² − floor²): {min(excess):.1f} "
                     f"to {max(excess):.1f})")
        lines.append(text + ".")
    return lines


def markdown(result: dict, out: str, reading: str = "") -> str:
    cfg, m = result["config"], result["machine"]
    load = result.get("load_average") or {}
    floors = ["| data | dim | floor SW (mean ± std) | reference set: modes, near, spread |",
              "| --- | --- | --- | --- |"]
    for name, f in result["floors"].items():
        floors.append(f"| {name} | {f['dim']} | {f['mean']:.4f} ± {f['std']:.4f} "
                      f"| {_modes(f['modes'])} |")
    clip = ("on (x_0 estimates clipped to [-1, 1])" if cfg["clip_sample"] else
            "off: the mixtures lie inside [-1, 1] to 4 stds, and clipping the x_0 estimate "
            "would only hide part of a sampler's error")
    text = [
        "# Samplers against an exact model", "",
        "Each sampler runs through `DiffusionPipeline` with the Bayes-optimal model of a "
        "Gaussian mixture (`diffusion.oracle.mixtures`) in place of a network, so the distance "
        "left is the sampler's own error. Cells: sliced Wasserstein-2 distance of "
        f"n = {cfg['n']} samples to {cfg['n']} fresh exact samples ({cfg['projections']} "
        "random directions, the same for every sampler), and in brackets its ratio to the "
        "floor, the same distance between two exact sample sets (1× is as good as exact "
        "sampling at this n). NFE: the model calls counted. Mode statistics (each sample "
        "counted at its nearest mean): the modes holding at least 2% of the samples; in 2-D "
        "the share of samples within 3 stds of their mode (98.9% for exact samples); the "
        "spread, the root mean square distance to the mode over its std times sqrt(dim) "
        "(about 1 for exact samples, below 1 where a sampler shrinks the modes).", "",
        f"Data: `ring` (8 equal modes on radius 0.8, std 0.05, 2-D) and `mix64` (10 modes, "
        f"64-D, weights 5-15%, stds 0.05-0.12, means in [-0.5, 0.5]). T = "
        f"{cfg['num_train_timesteps']}; clip_sample {clip}. Every sampler starts from the "
        f"same x_T; eta = {cfg['eta']} for DDIM (the ancestral samplers keep their own, 1).", "",
        "## Results", "", *_tables(result),
        "## Summary (computed from the tables)", "", *_summary(result), "",
        "## Floors", "", *floors, "",
        "## Command", "", "```bash", command(cfg, out), "```", "",
        "## Machine", "",
        f"- {time.strftime('%Y-%m-%d', time.localtime(result['finished']))}: {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s) "
        f"(OMP_NUM_THREADS={m['omp_num_threads']}), Python {m['python']}, {m['system']}, CPU only",
        f"- load average before {_load(load.get('before'))}, after {_load(load.get('after'))}",
        f"- runtime {result['seconds']:.0f} s for {len(result['runs'])} sampler runs "
        f"(model calls: {sum(r['nfe'] for r in result['runs'])})", "",
        "![distance vs NFE](oracle.png)", "",
    ]
    return "\n".join(text) + (reading or "")


def _load(values) -> str:
    return "n/a" if not values else ", ".join(f"{v:.2f}" for v in values)


def plot(result: dict, path: Path) -> None:
    """Distance vs NFE, log-log: a panel per (data set, schedule), a colour per sampler, a
    line style per (spacing, prediction type), the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    datasets, schedules = _groups(runs, "dataset"), _groups(runs, "schedule")
    samplers, styles = _groups(runs, "sampler"), _groups(runs, "spacing", "prediction_type")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(datasets), len(schedules), squeeze=False,
                             figsize=(5 * len(schedules), 3.8 * len(datasets)))
    for i, (dataset,) in enumerate(datasets):
        for j, (schedule,) in enumerate(schedules):
            ax = axes[i][j]
            for k, (sampler,) in enumerate(samplers):
                for s, style in enumerate(styles):
                    pts = sorted((r["nfe"], r["sw"]) for r in runs
                                 if (r["dataset"], r["schedule"], r["sampler"]) ==
                                 (dataset, schedule, sampler)
                                 and (r["spacing"], r["prediction_type"]) == style)
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", ms=3,
                                color=colours[k % len(colours)],
                                linestyle=["-", ":", "-.", (0, (5, 1))][s % 4],
                                label=f"{sampler} ({', '.join(style)})")
            ax.axhline(result["floors"][dataset]["mean"], color="grey", linestyle="--",
                       label="floor (exact samples)")
            ax.set(xscale="log", yscale="log", xlabel="NFE (model calls)",
                   ylabel="sliced W2 to exact samples", title=f"{dataset}, {schedule}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out: str | os.PathLike) -> list[str]:
    """Write the three files into ``out``; returns their portable paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine(), "finished": time.time()}
    result["command"] = command(result["config"], str(out))
    old = folder / "oracle.md"
    text = old.read_text() if old.exists() else ""
    reading = text[text.index(READING):] if READING in text else ""
    (folder / "oracle.md").write_text(markdown(result, str(out), reading))
    (folder / "oracle.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, folder / "oracle.png")
    return [portable_path(folder / name, f"<out>/{name}")
            for name in ("oracle.md", "oracle.json", "oracle.png")]
