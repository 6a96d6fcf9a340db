"""Checkpoints: atomic writes, keep-last-k, safe loading.

A checkpoint holds everything needed to continue bit-exactly: model, EMA,
optimizer, LR schedule, grad scaler, step and every RNG state. Files are written
to a temporary name and renamed, so a crash mid-write never leaves a truncated
``step_*.pt`` behind, and they are read back with ``weights_only=True`` so a
checkpoint can never execute code.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import torch

from diffusion.errors import CheckpointError
from diffusion.runtime.files import save_torch

_NAME = re.compile(r"^step_(\d+)\.pt$")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory`` ordered by step (oldest first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def step_of(path: str | Path) -> int:
    """The step a ``step_XXXXXXXX.pt`` checkpoint was written at, from its name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path} is not named step_XXXXXXXX.pt; pass a checkpoint that "
                              "diffusion.train wrote.")
    return int(match.group(1))


def saved_step(path: str | Path) -> int:
    """The step of any checkpoint: from a ``step_XXXXXXXX.pt`` name, else (``best.pt``, a
    renamed file) from the file itself."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else int(load(path)["step"])


def mismatch(path: Path, what: str, exc: BaseException) -> CheckpointError:
    """The one sentence for a checkpoint whose tensors do not fit the config's network."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CheckpointError(f"{path} does not hold the {what} that config.yaml describes "
                           f"({first}): pass a checkpoint of this run, or restore the run's "
                           "config.yaml.")


def load_weights(module, state: dict, what: str, path: Path) -> None:
    """``module.load_state_dict(state)``, a mismatch said in one sentence naming ``path``."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise mismatch(path, what, exc) from None


def resumable_checkpoint(run: str | Path) -> Path:
    """The newest checkpoint a resume of ``run`` continues from, or the one sentence saying
    there is none."""
    path = latest_checkpoint(Path(run) / "checkpoints")
    if path is None:
        raise CheckpointError(f"Nothing to resume in {run}: it has no checkpoints/step_*.pt; "
                              "start a new run instead.")
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def save_atomic(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``; a
    failed write (a full disk) leaves the older checkpoints as they were and no partial file,
    and ends in one sentence (``StorageError``)."""
    return save_torch(obj, path, "free space on that disk, then continue from the run's newest "
                      "checkpoint with resume=<run folder>")


def prune(directory: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (0 keeps everything)."""
    if keep_last <= 0:
        return
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely, turning every failure into one actionable sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: check the path, or train first so the run has a "
            "checkpoints/ folder."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise _no_memory(path) from None
    except OSError as exc:
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({(exc.strerror or type(exc).__name__).lower()}): "
            "check the file's permissions and the disk; the file itself may be fine.") from None
    except Exception as exc:  # noqa: BLE001 - torch reports a damaged file in many ways
        if "can't allocate memory" in str(exc):  # the CPU allocator's RuntimeError
            raise _no_memory(path) from None
        raise _corrupt(path, exc) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"Checkpoint {path} has no model weights; it was not written by diffusion.train."
        )
    return state


def _no_memory(path: Path) -> CheckpointError:
    return CheckpointError(f"Not enough memory to load checkpoint {path}: free memory (other "
                           "jobs, a smaller batch) and try again; the file itself may be fine.")


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path} is corrupt or not a diffusion checkpoint ({type(exc).__name__}); "
        "delete it to fall back to the previous one.")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that saves killed mid-write leave behind (a
    finished save renames its temporary file, so any left over is garbage)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(".*.pt.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def rng_state() -> dict:
    """Every RNG state that training consumes, as tensors and ints (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
