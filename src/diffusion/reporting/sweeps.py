"""A sweep's report, from its run folders alone: ``README.md`` with its tables, and the plots.

Reads the run folders of a sweep (``<multirun>/<job>/``: ``.hydra/overrides.yaml``,
``config.yaml``, ``env.json``, ``metrics.jsonl``, ``summary.json``, ``status.json``,
``eval.json``, ``samples/``) and writes ``<out>/README.md`` (the commands, the git commit, the
sample-quality table first: one row per job, its FID per sampler, spacing and step count with
the data floor, or the ``diffusion.evaluate sweep=`` command that measures them; then the
training table: status, final train and validation loss, marked where the jobs' objectives or
schedules make losses incomparable, wall time, images/s; and, when the jobs trained with
``trainer.eval_every``, their FID by training step) and PNG plots: loss curves overlaid,
FID against network evaluations (NFE) or, for a guidance sweep, against the guidance scale, FID
during training, the jobs' last sample grids side by side, and
the forward process when the jobs differ in beta schedule. Nothing else is read, so a report
can be regenerated. The commands name folders as anyone can paste them: relative to the
current folder, ``$DIFFUSION_DATA``/``$DIFFUSION_RUNS``, else a placeholder
(``diffusion.runs.records``).

The folders may be multirun folders or single runs, so that jobs of different sweeps can be
compared. A ``notes.md`` in ``out`` leads the README when its first line is the
``<!-- results <hash> -->`` line of the current numbers; otherwise it may describe earlier
results and follows them, marked, so regenerated numbers never sit under stale prose. The
YAML files are read as plain data (PyYAML, ``diffusion.runs.load``), so a notebook writes a
report without Hydra.
"""

from __future__ import annotations

__all__ = ["Job", "find_jobs", "legend_labels", "run_label", "write_report"]

import hashlib
import json
import os
from pathlib import Path

import yaml

from diffusion.metrics.fid import format_score
from diffusion.reporting import figures as viz
from diffusion.reporting.jobs import Job, find_jobs, job_overrides, legend_labels, run_label
from diffusion.runs.records import portable_arg, portable_path, shell_word


def sweep_command(sweep: Path) -> str | None:
    """The ``diffusion.train`` command that made a multirun folder or a run folder, its
    paths made portable (``diffusion.runs.records``)."""
    multirun = sweep / "multirun.yaml"
    if multirun.is_file():
        prefix = "-m "
        overrides = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]["task"]
    elif (overrides := job_overrides(sweep)) is not None:
        prefix = ""
    else:
        return None
    return f"python -m diffusion.train {prefix}" + " ".join(
        shell_word(portable_arg(str(o))) for o in overrides)


def shown_path(path: Path, sweep: Path) -> str:
    """A run or sweep folder as the report writes it: ``portable_path``, and outside the
    current folder and ``$DIFFUSION_RUNS``, ``<runs>/`` and the sweep's last two folder names
    (``multirun/<date>_<time>``) so that runs stay apart."""
    path, sweep = Path(os.path.abspath(path)), Path(os.path.abspath(sweep))
    tail = Path(*sweep.parts[-2:], path.relative_to(sweep)).as_posix()
    return portable_path(path, f"<runs>/{tail}")


def eval_command(command: str, run: str) -> str:
    """An evaluation's recorded command with its ``run=`` folder written as ``run``, a
    ``checkpoint=`` inside that folder written under ``run`` too, and its other paths made
    portable."""
    words = command.split(" ")
    recorded = next((Path(w[4:]) for w in words if w.startswith("run=")), None)

    def shown(word: str) -> str:
        if word.startswith("run="):
            return f"run={run}"
        path = Path(word.partition("=")[2])
        if word.startswith("checkpoint=") and recorded and path.is_relative_to(recorded):
            return f"checkpoint={run}/{path.relative_to(recorded).as_posix()}"
        return portable_arg(word)

    return " ".join(shown(word) for word in words)


Column = tuple[str, str, int, int]  # (sampler, timestep spacing, n, steps)


def _spacing(entry: dict) -> str:
    return entry.get("timestep_spacing") or ""


def _eval_columns(jobs: list[Job]) -> list[Column]:
    keys = {(e["sampler"], _spacing(e), e["n"], e["steps"]) for j in jobs for e in j.evals.values()}
    return sorted(keys)


def _column_name(column: Column, columns: list[Column]) -> str:
    """``ddim-10 (n=1000)``, with the spacing (``ddim trailing-10``) where the sampler was
    evaluated with more than one."""
    sampler, spacing, n, steps = column
    spacings = {c[1] for c in columns if c[0] == sampler}
    shown = f"{sampler} {spacing}" if len(spacings) > 1 and spacing else sampler
    return f"{shown}-{steps} (n={n})"


def _find_entry(job: Job, column: Column) -> dict | None:
    """The job's evaluation in ``column``; of several checkpoints, the latest."""
    found = [e for e in job.evals.values()
             if (e["sampler"], _spacing(e), e["n"], e["steps"]) == column]
    return max(found, key=lambda e: e.get("step") or 0, default=None)


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _table(rows: list[list]) -> str:
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def quality_table(jobs: list[Job]) -> str | None:
    """Sample quality, the table that answers which job is better: one row per job with
    its FID in each evaluated (sampler, spacing, n, steps) column, then the data floor of
    each column; None when no job was evaluated."""
    columns = _eval_columns(jobs)
    if not columns:
        return None
    head = ["job", "overrides", *[f"FID {_column_name(c, columns)}" for c in columns]]
    rows = [head, ["---"] * len(head)]
    for job in jobs:
        fids = [_find_entry(job, c) for c in columns]
        rows.append([job.name, " ".join(f"`{o}`" for o in job.varying) or "–",
                     *[format_score(e["fid"]) if e else "–" for e in fids]])
    floors = []
    for column in columns:
        entry = next((e for j in jobs if (e := _find_entry(j, column))), None)
        floors.append(format_score(entry["floor"]) if entry else "–")
    rows.append(["data floor", "real train images", *floors])
    return _table(rows)


LOSS_SETTINGS = {"objective": ("objective",), "beta schedule": ("scheduler", "beta_schedule"),
                 "prediction type": ("scheduler", "prediction_type")}
"""What weights the training loss differently, so losses compare only where it is equal."""


def loss_confounds(jobs: list[Job]) -> list[str]:
    """The settings among ``LOSS_SETTINGS`` in which the jobs differ."""
    def value(job: Job, path: tuple[str, ...]):
        node = job.config or {}
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return json.dumps(node, sort_keys=True, default=str)

    return [name for name, path in LOSS_SETTINGS.items()
            if len({value(j, path) for j in jobs if j.config is not None}) > 1]


def training_table(jobs: list[Job]) -> str:
    """How each job trained: status, final losses (marked when the jobs' losses do not
    compare), wall time and throughput."""
    mark = "*" if loss_confounds(jobs) else ""
    head = ["job", "overrides", "status", f"train loss{mark}", f"val loss{mark}", "wall time",
            "images/s"]
    rows = [head, ["---"] * len(head)]
    for job in jobs:
        rows.append([
            job.name, " ".join(f"`{o}`" for o in job.varying) or "–",
            job.status if job.status != "failed" else f"failed: {job.error}".replace("|", "/"),
            _fmt(job.last("train/loss")), _fmt(job.last("val/loss")), _duration(job.wall_time),
            "–" if job.images_per_sec is None else f"{job.images_per_sec:.0f}"])
    return _table(rows)


def results_table(jobs: list[Job]) -> str:
    """Both tables: sample quality (when evaluated), then training."""
    return "\n\n".join(t for t in (quality_table(jobs), training_table(jobs)) if t)


def _protocol(jobs: list[Job]) -> str | None:
    entries = [e for j in jobs for e in j.evals.values()]
    if not entries:
        return None
    features = sorted({e["feature_id"] for e in entries})
    refs = sorted({f"{e['reference']} ({e['reference_n']} images)" for e in entries})
    return (f"FID against {', '.join(refs)} in the features of {', '.join(features)}, from "
            "each run's EMA weights; the data floor is the FID of the same number of real "
            "training images against the same reference. Compare only columns with equal n.")


def _periodic_protocol(job: Job) -> str | None:
    """How a job's periodic FIDs were sampled, from its config: ``dpmpp_2m-10 (trailing),
    n=500``."""
    cfg = job.config
    if cfg is None or cfg.get("sampler") is None:
        return None
    sampler = cfg["sampler"]
    steps = sampler["steps"][0] if isinstance(sampler["steps"], list) else sampler["steps"]
    spacing = sampler.get("timestep_spacing")
    return (f"{sampler['name']}-{steps}" + (f" ({spacing})" if spacing else "")
            + f", n={cfg['trainer']['eval_n']}")


def periodic_table(jobs: list[Job]) -> str | None:
    """FID at each training step where the trainer scored one (``trainer.eval_every``):
    one row per job, the data floor last; None when no job has any."""
    steps = sorted({r["step"] for j in jobs for r in j.periodic_fids})
    if not steps:
        return None
    rows = [["job", "sampled as", *[f"step {s:,}" for s in steps]], ["---"] * (len(steps) + 2)]
    floors: dict[int, float] = {}
    for job in jobs:
        by_step = {r["step"]: r for r in job.periodic_fids}
        for r in by_step.values():
            if isinstance(r.get("eval/fid_floor"), int | float):
                floors.setdefault(r["step"], r["eval/fid_floor"])
        rows.append([job.label or job.name, _periodic_protocol(job) or "–",
                     *[format_score(by_step[s]["eval/fid"]) if s in by_step else "–"
                       for s in steps]])
    rows.append(["data floor", "real train images",
                 *[format_score(floors[s]) if s in floors else "–" for s in steps]])
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def _plots(jobs: list[Job], out: Path) -> dict[str, str]:
    plots = {}
    if any(j.records for j in jobs):
        viz.plot_loss_curves({j.label: j.records for j in jobs if j.records},
                             out / "loss_curves.png")
        plots["Loss curves"] = "loss_curves.png"
    plots |= _fid_plots(jobs, out)
    if any(j.periodic_fids for j in jobs):
        viz.plot_fid_during_training({j.label: j.periodic_fids for j in jobs if j.periodic_fids},
                                     out / "fid_during_training.png")
        plots["FID during training"] = "fid_during_training.png"
    grids = {f"{j.label}\n({j.latest_samples().stem})": j.latest_samples()
             for j in jobs if j.latest_samples() is not None}
    if grids:
        viz.side_by_side(grids, out / "samples.png")
        plots["Samples (EMA, fixed noise)"] = "samples.png"
    schedules = {j.config["scheduler"]["beta_schedule"]: j for j in jobs if j.config is not None}
    if len(schedules) > 1:
        first = next(iter(schedules.values())).config
        viz.forward_figure(first["data"], out / "forward_process.png", tuple(schedules),
                           int(first["scheduler"]["num_train_timesteps"]))
        plots["Forward process, one block per beta schedule"] = "forward_process.png"
    return plots


def _fid_plots(jobs: list[Job], out: Path) -> dict[str, str]:
    """FID against network evaluations (the steps; Heun's 2 * steps - 1), and where jobs
    were scored at several guidance scales with the same sampler and steps, FID against the
    guidance scale (``fid_vs_guidance.png``) instead of one dot per scale."""
    split = {j.label: viz.guidance_sweeps(list(j.evals.values())) for j in jobs if j.evals}
    plots = {}
    if by_nfe := {label: plain for label, (plain, _) in split.items() if plain}:
        viz.plot_fid_vs_steps(by_nfe, out / "fid_vs_steps.png")
        plots["FID against network evaluations (NFE)"] = "fid_vs_steps.png"
    if by_scale := {label: swept for label, (_, swept) in split.items() if swept}:
        viz.plot_fid_vs_guidance(by_scale, out / "fid_vs_guidance.png")
        plots["FID against the guidance scale"] = "fid_vs_guidance.png"
    return plots


def write_report(sweeps: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out/README.md`` and the plots for the jobs under ``sweeps``."""
    jobs = find_jobs(sweeps)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(jobs, out)
    env = next((j.env for j in jobs if j.env), {})
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)"
                                                       if git.get("dirty") else "")
    periodic = periodic_table(jobs)
    digest = hashlib.sha1((results_table(jobs) + (periodic or "")).encode()).hexdigest()[:12]
    current, stale = _notes(out / "notes.md", digest)
    lines = [f"# {title or out.name}", ""]
    if current:
        lines += [current, ""]
    lines += ["## Commands", "", "```bash"]
    lines += [c for s in sweeps if (c := sweep_command(s))]
    lines += sorted({eval_command(e["command"], _shown_job(j, sweeps))
                     for j in jobs for e in j.evals.values() if e.get("command")})
    shown = [shown_path(s, s) for s in sweeps]
    sweep_arg = shown[0] if len(shown) == 1 else "[" + ",".join(shown) + "]"
    title_arg = f' "title={title!r}"' if title else ""
    lines += [f"python -m diffusion.report sweep={sweep_arg} out={portable_path(out, '<out>')}"
              f"{title_arg}",
              "```", "",
              f"Git commit {commit}; device {env.get('device_name') or env.get('device')}; "
              f"started {env.get('started', 'unknown')}; torch {env.get('torch', '?')}.", "",
              "## Results", ""]
    lines += _results_sections(jobs, sweep_arg)
    if periodic is not None:
        lines += ["### FID by training step", "",
                  "The trainer's own FIDs (`trainer.eval_every`) from the EMA weights at each "
                  "step, with the same starting noise every time, scored like the table above.",
                  "", periodic, ""]
    for caption, file in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    if stale:
        lines += ["## Notes written for other results", "",
                  "These notes carry no `<!-- results ... -->` line of the numbers above, so "
                  "they may describe earlier results: read them against the tables. Once they "
                  f"are checked, make `<!-- results {digest} -->` the first line of notes.md "
                  "and they lead the report again.", "", stale, ""]
    lines += [f"<!-- results {digest} -->"]
    readme = out / "README.md"
    readme.write_text("\n".join(lines).rstrip() + "\n")
    return readme


def _notes(path: Path, digest: str) -> tuple[str | None, str | None]:
    """``notes.md`` as (current, stale): current when its first line is
    ``<!-- results <digest> -->`` of these very results (then shown first, without that
    line), stale otherwise (shown after the results, marked)."""
    if not path.is_file():
        return None, None
    text = path.read_text().strip()
    first, _, rest = text.partition("\n")
    if first.strip() == f"<!-- results {digest} -->":
        return rest.strip() or None, None
    return None, text


def _results_sections(jobs: list[Job], sweep_arg: str) -> list[str]:
    """Sample quality first (or the command that measures it), then training, with what the
    loss columns can and cannot be compared across."""
    lines = ["### Sample quality", ""]
    quality = quality_table(jobs)
    if quality is None:
        lines += ["No job is evaluated yet, and losses do not rank samples: score every job "
                  "under one protocol, then report again:", "", "```bash",
                  f"python -m diffusion.evaluate sweep={sweep_arg} n=1000 sampler.steps=20",
                  "```", ""]
    else:
        lines += [_protocol(jobs) or "", "", quality, ""]
    lines += ["### Training", "", training_table(jobs), ""]
    confounds = loss_confounds(jobs)
    if confounds:
        lines += [f"\\* These jobs differ in {' and '.join(confounds)}, which weight the loss "
                  "differently: their losses do not compare with each other (only within one "
                  "objective and schedule); the sample-quality table ranks them.", ""]
    lines += ["Losses compare only between jobs of one objective and beta schedule. Final losses "
              "are the last logged values; images/s is the median training throughput; wall "
              "time covers the whole job (training, sampling grids, validation).", ""]
    return lines


def _shown_job(job: Job, sweeps: list[Path]) -> str:
    """``shown_path`` of a job, which ``find_jobs`` took from a sweep or a sweep's child."""
    return shown_path(job.path, job.path if job.path in sweeps else job.path.parent)
