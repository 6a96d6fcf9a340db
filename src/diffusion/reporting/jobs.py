"""The jobs of a sweep as a report reads them: one ``Job`` per run folder (its overrides,
status, config, env, summary, metrics and evaluations, read from the folder alone) and the
labels that tell jobs apart in tables and legends (the overrides in which they differ)."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffusion.runs.load import read_config
from diffusion.runs.records import read_eval
from diffusion.training.loggers import read_metrics


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def job_overrides(run: Path) -> list[str] | None:
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
        return cls(path=path, name=name, overrides=job_overrides(path) or [],
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


def legend_labels(overrides: dict[str, list[str]]) -> dict[str, str]:
    """{job: label} from each job's command-line overrides ({job: overrides}): the overrides
    in which it differs from the other jobs, keys shortened to their last part
    (``lr=0.001``) unless that makes two labels alike. An empty label where no override
    tells a job apart (a job alone, or jobs run alike)."""
    common = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    varying = {job: [o for o in own if o not in common] for job, own in overrides.items()}
    labels = {job: ", ".join(_short(o) for o in own) for job, own in varying.items()}
    if len(set(labels.values())) < len(labels):
        labels = {job: ", ".join(own) for job, own in varying.items()}
    return labels


def _config_name(config: dict | None) -> str | None:
    """A run's ``name`` (``<model>-<data>`` unless set), from its saved config."""
    return str(config["name"]) if config and config.get("name") else None


def run_label(run: str | Path) -> str:
    """A legend label for one run folder, not its date and time: the overrides that tell it
    from the other jobs of its multirun folder, else its config's ``name``
    (``<model>-<data>``), else the folder's name."""
    run = Path(os.path.abspath(run))
    jobs = {run.name: job_overrides(run) or []}
    if (run.parent / "multirun.yaml").is_file():
        jobs |= {p.name: job_overrides(p) or [] for p in run.parent.iterdir()
                 if p.is_dir() and _is_run(p)}
    config = read_config(run) if (run / "config.yaml").is_file() else None
    return legend_labels(jobs)[run.name] or _config_name(config) or run.name


def _label(jobs: list[Job]) -> None:
    """Each job's ``varying`` overrides (not shared by all jobs) and its legend label
    (``legend_labels``; where no override tells it apart, its config's name), with the
    job's folder added to labels that would read alike."""
    common = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    labels = legend_labels({j.name: j.overrides for j in jobs})
    for job in jobs:
        job.varying = [o for o in job.overrides if o not in common]
        job.label = labels[job.name] or _config_name(job.config) or job.name
    alike = [job.label for job in jobs]
    for job in jobs:
        if alike.count(job.label) > 1 and job.label != job.name:
            job.label += f" ({job.name})"
