"""A sweep's report, from its run folders alone: ``README.md`` with its tables, and the plots.

Reads the run folders of a sweep (``<multirun>/<job>/``: ``.hydra/overrides.yaml``,
``config.yaml``, ``env.json``, ``metrics.jsonl``, ``summary.json``, ``status.json``,
``eval.json``, ``samples/``) and writes ``<out>/README.md`` (the command, the git commit and
a table with one row per job: overrides, final train and validation loss, FID per sampler,
spacing and step count with the data floor, wall time, images/s; and, when the jobs trained
with ``trainer.eval_every``, their FID by training step) and PNG plots: loss curves overlaid,
FID against sampling steps, FID during training, the jobs' last sample grids side by side, and
the forward process when the jobs differ in beta schedule. Nothing else is read, so a report
can be regenerated. The commands name folders as anyone can paste them: relative to the
current folder, ``$DIFFUSION_DATA``/``$DIFFUSION_RUNS``, else a placeholder
(``diffusion.runs.records``).

The folders may be multirun folders or single runs, so that jobs of different sweeps can be
compared. A ``notes.md`` in ``out`` is kept at the top of the README. The YAML files are read
as plain data (PyYAML, ``diffusion.runs.load``), so a notebook writes a report without Hydra.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffusion.metrics.fid import format_score
from diffusion.reporting import figures as viz
from diffusion.runs.load import read_config
from diffusion.runs.records import portable_arg, portable_path, read_eval, shell_word
from diffusion.training.loggers import read_metrics


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _overrides(run: Path) -> list[str] | None:
    """The command-line overrides Hydra saved in a run folder (``.hydra/overrides.yaml``, a
    list of strings); None when the folder has none."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


@dataclass
class Job:
    """What one run folder says about itself."""

    path: Path
    name: str
    overrides: list[str]
    status: str
    error: str | None
    config: dict | None
    env: dict
    summary: dict
    records: list[dict]
    evals: dict[str, dict]
    label: str = ""
    varying: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, name: str) -> Job:
        status = _json(path / "status.json")
        return cls(path=path, name=name, overrides=_overrides(path) or [],
                   status=status.get("status", "unknown"), error=status.get("error"),
                   config=read_config(path) if (path / "config.yaml").is_file() else None,
                   env=_json(path / "env.json"), summary=_json(path / "summary.json"),
                   records=read_metrics(path / "metrics.jsonl"), evals=read_eval(path))

    def last(self, key: str) -> float | None:
        values = [r[key] for r in self.records if isinstance(r.get(key), int | float)]
        return values[-1] if values else None

    @property
    def images_per_sec(self) -> float | None:
        values = [r["train/images_per_sec"] for r in self.records
                  if isinstance(r.get("train/images_per_sec"), int | float)]
        return statistics.median(values) if values else None

    @property
    def wall_time(self) -> float | None:
        if "wall_time_sec" in self.summary:
            return self.summary["wall_time_sec"]
        times = [r["time"] for r in self.records if "time" in r and "train/loss" in r]
        return times[-1] - times[0] if len(times) > 1 else None

    @property
    def periodic_fids(self) -> list[dict]:
        """The trainer's periodic FIDs (``trainer.eval_every``): ``eval/fid`` records that
        ``diffusion.evaluate`` did not write (its records name their sampler)."""
        return [r for r in self.records
                if isinstance(r.get("eval/fid"), int | float) and "eval/sampler" not in r]

    def latest_samples(self) -> Path | None:
        grids = sorted((self.path / "samples").glob("step_*.png"))
        return grids[-1] if grids else None


def _is_run(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "config.yaml").is_file()


def find_jobs(sweeps: list[Path]) -> list[Job]:
    """Every run folder under the given multirun folders (or the folders themselves)."""
    jobs = []
    for sweep in sweeps:
        if not sweep.is_dir():
            raise ValueError(f"sweep={sweep} is not a folder: pass the multirun folder "
                             "(runs/multirun/<date>_<time>) or run folders.")
        if _is_run(sweep):
            jobs.append(Job.load(sweep, f"{sweep.parent.name}/{sweep.name}"))
            continue
        found = sorted((p for p in sweep.iterdir() if p.is_dir() and _is_run(p)),
                       key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                      else 0, p.name))
        prefix = f"{sweep.name}/" if len(sweeps) > 1 else ""
        jobs += [Job.load(p, f"{prefix}{p.name}") for p in found]
    if not jobs:
        raise ValueError(f"No run folders under {', '.join(map(str, sweeps))}: pass the "
                         "multirun folder that diffusion.train -m printed.")
    _label(jobs)
    return jobs


def _short(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}"


def _label(jobs: list[Job]) -> None:
    """Each job's ``varying`` overrides (not shared by all jobs) and a short label: the
    varying group choices (``model=unet``) if any, else all varying overrides."""
    common = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for job in jobs:
        job.varying = [o for o in job.overrides if o not in common]
        groups = [o for o in job.varying if "." not in o.partition("=")[0]]
        job.label = ", ".join(_short(o) for o in (groups or job.varying)) or job.name


def sweep_command(sweep: Path) -> str | None:
    """The ``diffusion.train`` command that made a multirun folder or a run folder, its
    paths made portable (``diffusion.runs.records``)."""
    multirun = sweep / "multirun.yaml"
    if multirun.is_file():
        prefix = "-m "
        overrides = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]["task"]
    elif (overrides := _overrides(sweep)) is not None:
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


def results_table(jobs: list[Job]) -> str:
    """The markdown table: one row per job, then the data floor of each FID column."""
    columns = _eval_columns(jobs)
    head = ["job", "overrides", "status", "train loss", "val loss",
            *[f"FID {_column_name(c, columns)}" for c in columns], "wall time", "images/s"]
    rows = [head, ["---"] * len(head)]
    for job in jobs:
        fids = [_find_entry(job, c) for c in columns]
        wall = job.wall_time
        rows.append([
            job.name, " ".join(f"`{o}`" for o in job.varying) or "–",
            job.status if job.status != "failed" else f"failed: {job.error}".replace("|", "/"),
            _fmt(job.last("train/loss")), _fmt(job.last("val/loss")),
            *[format_score(e["fid"]) if e else "–" for e in fids],
            _duration(wall),
            "–" if job.images_per_sec is None else f"{job.images_per_sec:.0f}"])
    if columns:
        floors = []
        for column in columns:
            entry = next((e for j in jobs if (e := _find_entry(j, column))), None)
            floors.append(format_score(entry["floor"]) if entry else "–")
        rows.append(["data floor", "real train images", "", "", "", *floors, "", ""])
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


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
    if any(j.evals for j in jobs):
        viz.plot_fid_vs_steps({j.label: list(j.evals.values()) for j in jobs if j.evals},
                              out / "fid_vs_steps.png")
        plots["FID against sampling steps"] = "fid_vs_steps.png"
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


def write_report(sweeps: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out/README.md`` and the plots for the jobs under ``sweeps``."""
    jobs = find_jobs(sweeps)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(jobs, out)
    env = next((j.env for j in jobs if j.env), {})
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)"
                                                       if git.get("dirty") else "")
    lines = [f"# {title or out.name}", ""]
    notes = out / "notes.md"
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
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
    if (protocol := _protocol(jobs)) is not None:
        lines += [protocol, ""]
    lines += [results_table(jobs), ""]
    lines += ["Final losses are the last logged values; images/s is the median training "
              "throughput; wall time covers the whole job (training, sampling grids, "
              "validation).", ""]
    if (periodic := periodic_table(jobs)) is not None:
        lines += ["### FID by training step", "",
                  "The trainer's own FIDs (`trainer.eval_every`) from the EMA weights at each "
                  "step, with the same starting noise every time, scored like the table above.",
                  "", periodic, ""]
    for caption, file in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    readme = out / "README.md"
    readme.write_text("\n".join(lines).rstrip() + "\n")
    return readme


def _shown_job(job: Job, sweeps: list[Path]) -> str:
    """``shown_path`` of a job, which ``find_jobs`` took from a sweep or a sweep's child."""
    return shown_path(job.path, job.path if job.path in sweeps else job.path.parent)
