"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from diffusion.paths import CONF_DIR as CONF_DIR  # re-exported: the entry points' configs
from diffusion.rundir import RunError
from diffusion.training.checkpoint import CheckpointError
from diffusion.training.config import ConfigError
from diffusion.training.trainer import TrainingError


def _user_errors() -> tuple[type[BaseException], ...]:
    from diffusion.data import DatasetNotFoundError

    return (ConfigError, CheckpointError, TrainingError, RunError, DatasetNotFoundError)


USER_ERRORS = _user_errors()


def fail(error: BaseException | str) -> None:
    """End the program with one sentence on stderr and exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
