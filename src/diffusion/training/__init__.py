"""Training: ``trainer`` (the ``Trainer``), ``config`` (its validated settings), ``ema``,
``checkpoint`` (a run's checkpoint files), ``loggers`` (metrics.jsonl and W&B), ``lr``
(learning-rate schedules) and ``batches`` (the resumable sample order).

This package exports only the light pieces, so that reading checkpoints or metrics does not
load the trainer; the trainer itself is ``from diffusion.training.trainer import Trainer``.
"""

from diffusion.training.config import TrainerConfig
from diffusion.training.ema import EMA

__all__ = ["EMA", "TrainerConfig"]
