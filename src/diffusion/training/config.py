"""Trainer settings, validated before any work starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffusion.checks import check_bool, check_choice, check_int, check_number
from diffusion.errors import ConfigError
from diffusion.runtime.device import PRECISIONS


@dataclass
class TrainerConfig:
    """``trainer.*`` in the Hydra config. Every ``*_every`` counts optimizer steps; 0 disables."""

    max_steps: int = 100_000
    max_minutes: float = 0.0        # also stop (with a checkpoint) after this many minutes of
                                    # this launch's training, checked every step; 0: off
    device: str = "auto"            # auto | cpu | cuda[:N]
    precision: str = "auto"         # auto (bf16: CUDA, native-bf16 CPUs) | fp32 | bf16 | fp16
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
    early_logs: bool = True         # also log at steps 1, 2, 5, 10, 20, 50, ... below
                                    # log_every, so the loss is seen moving within a minute
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
    init_from: str | None = None    # start from these weights (a checkpoint, or a run folder:
                                    # its newest; EMA weights where saved), not from scratch

    def __post_init__(self):
        off = " (0 turns it off)"
        for key in ("max_steps", "grad_accum", "ema_every", "sample_n", "val_batches",
                    "divergence_window", "eval_n"):
            check_int(f"trainer.{key}", getattr(self, key))
        for key in ("log_every", "sample_every", "val_every", "eval_every", "ckpt_every",
                    "keep_last"):
            check_int(f"trainer.{key}", getattr(self, key), minimum=0, note=off)
        for key in ("grad_clip", "max_minutes"):
            check_number(f"trainer.{key}", getattr(self, key), minimum=0, note=off)
        check_bool("trainer.early_logs", self.early_logs)
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ConfigError(f"trainer.init_from must be a checkpoint or run folder path "
                              f"(or null); got {self.init_from!r}.")
        check_number("trainer.label_dropout", self.label_dropout, minimum=0, below=1)
        check_number("trainer.ema_decay", self.ema_decay, minimum=0, below=1)
        check_choice("trainer.precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N; "
                              f"got {self.device!r}.")
        if self.divergence_factor != 0:
            check_number("trainer.divergence_factor", self.divergence_factor, above=1,
                         note=" (0 turns the check off)")
        scale = check_number("trainer.sample_guidance_scale", self.sample_guidance_scale,
                             minimum=0, allow_none=True)
        if scale not in (None, 1) and not self.label_dropout:
            raise ConfigError(f"trainer.sample_guidance_scale={scale:g} needs the unconditional "
                              "prediction, which trainer.label_dropout=0 leaves untrained: set "
                              "trainer.label_dropout > 0 or leave sample_guidance_scale null.")
