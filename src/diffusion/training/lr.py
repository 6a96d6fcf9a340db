"""Learning-rate schedules: linear warm-up, then constant, cosine or linear decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from diffusion.checks import check_choice, check_int

DECAYS = ("constant", "cosine", "linear")


def warmup_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                    decay: str = "constant", min_lr_ratio: float = 0.0) -> LambdaLR:
    """LR multiplier ramps 0 -> 1 over ``warmup_steps``, then follows ``decay`` to
    ``min_lr_ratio`` at ``total_steps``. Stepped once per optimizer step."""
    check_choice("lr_scheduler.decay", decay, DECAYS)
    check_int("lr_scheduler.warmup_steps", warmup_steps, minimum=0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return LambdaLR(optimizer, factor)
