"""What a checkpoint holds of a ``Trainer`` and how a run continues from one.

Everything that decides the next step is saved: the weights, the EMA, the optimizer's
moments, the LR schedule, the loss scaler, the noise stream and every RNG, the data position
and the divergence check's history, so a resumed run continues bit for bit (on a GPU with
``trainer.deterministic=true``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from torch.optim.lr_scheduler import LambdaLR

from diffusion.errors import CheckpointError
from diffusion.models.adapters import frozen_base, load_saved, saved_state
from diffusion.training import checkpoint as ckpt

log = logging.getLogger("diffusion.training.trainer")


class CheckpointState:
    """The ``Trainer``'s state as a checkpoint: ``state_dict``, ``load_state_dict``,
    ``resume`` and ``save_checkpoint``."""

    def state_dict(self) -> dict:
        """Of a network on a frozen base (``finetune=lora``, ``control=``) the weights are
        the trained part's alone: the base comes from the base run, which the run's config
        names with its checkpoint's checksum (``models.adapters``)."""
        ema = self.ema.state_dict()
        ema["model"] = saved_state(self.model, ema["model"])
        return {
            "step": self.step,
            "model": saved_state(self.model, self.model.state_dict()),
            "ema": ema,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "scaler": self.scaler.state_dict(),
            "noise_generator": self.noise_generator.get_state(),
            "rng": ckpt.rng_state(),
            "best": self.best,
            "logged_losses": list(self._logged_losses),
            "micro_batches": self.micro_batches,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. The hyperparameters of this trainer's config win over the
        checkpoint's (a resume with ``optimizer.lr=...`` trains at the new rate): the
        optimizer's moments and the step are restored, its settings are not, and a LambdaLR
        schedule (``lr_scheduler=warmup``) is re-evaluated at the restored step."""
        settings = [{k: v for k, v in group.items() if k != "params"}
                    for group in self.optimizer.param_groups]
        if frozen_base(self.model):  # the trained part onto the base already in place
            load_saved(self.model, state["model"], "network", "the checkpoint")
            load_saved(self.ema.model, state["ema"]["model"], "EMA", "the checkpoint")
            self.ema.num_updates = int(state["ema"]["num_updates"])
        else:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, fresh in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(fresh)
        self.step = int(state["step"])
        if isinstance(self.lr_scheduler, LambdaLR):  # a pure function of the step
            schedule = self.lr_scheduler
            schedule.last_epoch = self.step
            for group, base, factor in zip(self.optimizer.param_groups, schedule.base_lrs,
                                           schedule.lr_lambdas, strict=True):
                group["lr"] = base * factor(self.step)
            schedule._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        elif self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.noise_generator.set_state(state["noise_generator"])
        ckpt.set_rng_state(state["rng"])
        self.best = float(state.get("best", math.inf))
        self._logged_losses = [float(v) for v in state.get("logged_losses", [])]
        self.micro_batches = int(state.get("micro_batches", self.step * self.cfg.grad_accum))
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def resume(self, path: str | Path | None = None) -> Path:
        """Continue from ``path`` or the run's newest checkpoint. Everything is read onto
        the CPU first: the RNG states must stay there, and the model, EMA and optimizer
        copy their tensors onto the training device as they load."""
        path = Path(path) if path else ckpt.resumable_checkpoint(self.run_dir)
        state = ckpt.load(path, map_location="cpu")
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:  # another network's tensors
            raise ckpt.mismatch(path, "network", exc) from None
        self._start_step = self.step
        log.info("Resumed from %s at step %d.", path, self.step)
        return path

    def init_weights(self, source: str | Path) -> Path:
        """Start from the weights of ``source`` (a checkpoint, or a run folder: its newest),
        its EMA weights where it has them, into both the model and its EMA; the optimizer,
        the step and the schedules start afresh (``trainer.init_from``: fine-tuning, the
        next rectified flow of ``diffusion.reflow``). A network of another shape is named
        in one sentence."""
        source = Path(source)
        path = source
        if source.is_dir():
            path = ckpt.latest_checkpoint(source / "checkpoints")
            if path is None:
                raise CheckpointError(f"trainer.init_from={source} holds no checkpoints/"
                                      "step_*.pt: pass a run folder that has trained, or a "
                                      "checkpoint file.")
        elif not source.is_file():
            raise CheckpointError(f"trainer.init_from={source} is neither a checkpoint nor "
                                  "a run folder: pass one of them.")
        state = ckpt.load(path, map_location="cpu")
        weights = state["ema"]["model"] if "ema" in state else state.get("model")
        if weights is None:
            raise CheckpointError(f"trainer.init_from={path} holds no network weights "
                                  "(model or ema): pass a diffusion.train checkpoint.")
        try:
            for module in (self.model, self.ema.model):
                module.load_state_dict(weights)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"trainer.init_from={path} holds another network than "
                                  f"model describes ({first}): start from a run with the same "
                                  "model settings.") from None
        log.info("Weights from %s (%s).", path, "its EMA" if "ema" in state else "its model")
        return path

    def save_checkpoint(self) -> Path:
        path = ckpt.save_atomic(self.state_dict(), ckpt.checkpoint_path(self.ckpt_dir, self.step))
        ckpt.prune(self.ckpt_dir, self.cfg.keep_last)
        return path
