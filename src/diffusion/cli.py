"""Helpers shared by the command-line entry points."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from diffusion.errors import USER_ERRORS


def _conf_dir() -> Path:
    if os.environ.get("DIFFUSION_CONFIG_DIR"):
        return Path(os.environ["DIFFUSION_CONFIG_DIR"]).resolve()
    return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _conf_dir()

__all__ = ["CONF_DIR", "USER_ERRORS", "fail", "seed_everything"]


def fail(error: BaseException | str) -> None:
    """End the program with one sentence on stderr and exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
