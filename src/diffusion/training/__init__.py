"""Training: the trainer, EMA, checkpoints, loggers and LR schedules."""

from diffusion.training.config import ConfigError, TrainerConfig
from diffusion.training.ema import EMA
from diffusion.training.trainer import Trainer, TrainingError

__all__ = ["EMA", "ConfigError", "Trainer", "TrainerConfig", "TrainingError"]
