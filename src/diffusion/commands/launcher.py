"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from diffusion.errors import USER_ERRORS
from diffusion.config.paths import CONF_DIR

__all__ = ["CONF_DIR", "USER_ERRORS", "fail", "seed_everything"]


def fail(error: BaseException | str) -> None:
    """End the program with one sentence on stderr and exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
