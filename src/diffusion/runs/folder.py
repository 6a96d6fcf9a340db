"""Run folders: making one and what a run writes about itself (``runs.load`` reads one back).

A run folder (``runs/<name>/<date>_<time>/``) holds ``config.yaml`` (the resolved config
that resume, sampling and evaluation read; ``.hydra/`` keeps Hydra's own copy with its
interpolations and the overrides), ``env.json`` (command, git state, versions, device),
``metrics.jsonl``, ``checkpoints/`` and ``samples/``: enough to resume, to
sample and to re-run.
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from diffusion.errors import RunError

MAX_DIFF_BYTES = 1_000_000


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: str | Path | None = None) -> dict:
    """Commit, dirty flag and diff of the source tree (None outside a git checkout)."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None}
    diff = _git("diff", "HEAD", cwd=cwd) or ""
    untracked = _git("ls-files", "--others", "--exclude-standard", cwd=cwd) or ""
    return {
        "commit": commit.strip(),
        "dirty": bool(diff.strip() or untracked.strip()),
        "diff": diff[:MAX_DIFF_BYTES],
        "untracked": untracked.split(),
    }


def environment(seed: int | None = None, device: torch.device | None = None) -> dict:
    """Everything needed to say later how a run was produced."""
    import torchvision

    env = {
        "command": list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": _version("hydra-core"),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device) if device is not None else None,
        "device_name": (torch.cuda.get_device_name(device) if device is not None
                        and device.type == "cuda" else platform.processor() or "cpu"),
        "num_threads": torch.get_num_threads(),
        "seed": seed,
        "git": git_state(),
    }
    return env


def create_run_dir(path: str | Path) -> Path:
    """Make a new, empty run folder at ``path``, or at ``path_1``, ``path_2``, ... when that
    name is taken: ``mkdir`` is atomic, so two runs started in the same second never share
    a folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in range(1000):
            candidate = path if suffix == 0 else path.with_name(f"{path.name}_{suffix}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        blocking = next((p for p in path.parents if p.exists()), path.parent)
        reason = (exc.strerror or type(exc).__name__).lower()
        raise RunError(f"Cannot create the run folder {path} ({reason}): make "
                       f"{blocking} writable or set paths.runs_dir to a writable folder."
                       ) from None
    raise RunError(f"Cannot create the run folder {path}: 1000 folders of that name exist; "
                   "clean up or set paths.runs_dir elsewhere.")


def write_env(run_dir: str | Path, seed: int | None, device: torch.device | None,
              resumed: bool = False, extra: dict | None = None) -> Path:
    """``env.json``: how the run was produced (with ``extra``, e.g. a sweep job's own
    ``job_command``); a resume writes ``env-resume-<time>.json`` beside it, so the first
    launch's record stays."""
    name = f"env-resume-{time.strftime('%Y%m%d-%H%M%S')}.json" if resumed else "env.json"
    path = Path(run_dir) / name
    path.write_text(json.dumps({**environment(seed, device), **(extra or {})}, indent=2) + "\n")
    return path


def append_resume(run_dir: str | Path, checkpoint: Path, step: int,
                  changes: dict[str, tuple]) -> None:
    """One line of ``resumes.jsonl``: when, the command, the checkpoint and step it
    continued from, and the settings it changed (``{key: (old, new)}``)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": list(getattr(sys, "orig_argv", sys.argv)),
              "checkpoint": checkpoint.name, "step": step,
              "changed": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}}
    with (Path(run_dir) / "resumes.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def record_end(run_dir: Path, exc: BaseException | None, *, started: bool, resuming: bool,
               multirun: bool, interrupted: str | None = None) -> None:
    """``status.json`` for a run that trained: completed, failed (with the error) or
    interrupted (by the signal ``interrupted`` names). A new single run that failed before
    its first step is removed (nothing in it is worth keeping); a resume that failed before
    training leaves the run exactly as it was; a sweep keeps its failed jobs' folders for the
    report."""
    if exc is None or started or (multirun and not resuming):
        status = ({"status": "interrupted", "signal": interrupted} if interrupted
                  else {"status": "completed"} if exc is None
                  else {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        (run_dir / "status.json").write_text(json.dumps(status) + "\n")
    elif not resuming and not multirun:
        shutil.rmtree(run_dir, ignore_errors=True)


def sweep_failures(sweep_dir: Path, jobs: int) -> str | None:
    """After a sweep of ``jobs`` jobs: one sentence naming every job that failed or never
    wrote its status, or None when all completed."""
    statuses = {path.parent: json.loads(path.read_text())
                for path in sorted(sweep_dir.glob("*/status.json"))}
    failed = {job: s.get("error", "") for job, s in statuses.items()
              if s.get("status") != "completed"}
    missing = jobs - len(statuses)
    if not failed and missing <= 0:
        return None
    lines = [f"{job}: {error}" for job, error in failed.items()]
    if missing > 0:
        lines.append(f"{missing} job(s) ended without writing status.json (killed or crashed)")
    return (f"{len(failed) + max(missing, 0)} of {jobs} sweep jobs failed, the others "
            "completed: " + "; ".join(lines))


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
