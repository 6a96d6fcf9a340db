"""Trainer settings, validated before any work starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffusion.runtime.device import PRECISIONS
from diffusion.errors import ConfigError


@dataclass
class TrainerConfig:
    """``trainer.*`` in the Hydra config. Every ``*_every`` counts optimizer steps; 0 disables."""

    max_steps: int = 100_000
    max_minutes: float = 0.0        # also stop (with a checkpoint) after this many minutes of
                                    # this launch's training, checked at log steps; 0: off
    device: str = "auto"            # auto | cpu | cuda[:N]
    precision: str = "auto"         # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    grad_accum: int = 1             # micro-batches per optimizer step
    grad_clip: float = 1.0          # max global grad norm; 0 disables clipping
    divergence_factor: float = 100.0  # stop when the logged loss exceeds this x its running
    divergence_window: int = 20       # median over the last window logs; 0 turns it off
    deterministic: bool = False     # deterministic kernels (cuBLAS, attention backward): on
                                    # CUDA, what makes a resumed run bit-identical; slower
    label_dropout: float = 0.1      # class-conditional runs: share of labels replaced by the
                                    # null label, so one network learns p(x|y) and p(x)
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    ema_every: int = 1
    compile: bool = False           # torch.compile the model
    channels_last: bool = False
    log_every: int = 100
    sample_every: int = 5000
    sample_n: int = 64
    sample_guidance_scale: float | None = None  # a conditional run's grids: classifier-free
                                                # guidance weight (None: the conditional model)
    val_every: int = 5000
    val_batches: int = 8
    eval_every: int = 0             # run the evaluator (e.g. a small FID); 0 disables
    eval_n: int = 1000              # images per periodic FID (sampled as the grids are)
    best_metric: str = "fid"        # evaluator key whose lowest value is kept as best.pt
    ckpt_every: int = 5000
    keep_last: int = 3
    progress: bool = True

    def __post_init__(self):
        def positive(key):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"trainer.{key} must be a positive integer; got {value!r}.")

        def non_negative(key):
            value = getattr(self, key)
            if value is None or value < 0:
                raise ConfigError(f"trainer.{key} must be >= 0 (0 turns it off); got {value!r}.")

        for key in ("max_steps", "grad_accum", "ema_every", "sample_n",
                    "val_batches", "divergence_window", "eval_n"):
            positive(key)
        for key in ("log_every", "sample_every", "val_every", "eval_every", "ckpt_every",
                    "keep_last",
                    "grad_clip"):
            non_negative(key)
        if not isinstance(self.max_minutes, (int, float)) or self.max_minutes < 0:
            raise ConfigError(f"trainer.max_minutes must be >= 0 (0 turns it off); "
                              f"got {self.max_minutes!r}.")
        if not isinstance(self.label_dropout, (int, float)) or not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"trainer.label_dropout must be in [0, 1); "
                              f"got {self.label_dropout!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must be in [0, 1); got {self.ema_decay!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; "
                              f"got {self.precision!r}.")
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N; "
                              f"got {self.device!r}.")
        if self.divergence_factor != 0 and self.divergence_factor <= 1:
            raise ConfigError("trainer.divergence_factor must be > 1 (0 turns the check off); "
                              f"got {self.divergence_factor!r}.")
        scale = self.sample_guidance_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)
                                  or scale < 0):
            raise ConfigError(f"trainer.sample_guidance_scale must be a number >= 0 or null; "
                              f"got {scale!r}.")
        if scale not in (None, 1) and not self.label_dropout:
            raise ConfigError(f"trainer.sample_guidance_scale={scale:g} needs the unconditional "
                              "prediction, which trainer.label_dropout=0 leaves untrained: set "
                              "trainer.label_dropout > 0 or leave sample_guidance_scale null.")
