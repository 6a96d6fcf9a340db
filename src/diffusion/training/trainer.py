"""One trainer for every backbone, scheduler and dataset.

CUDA first (bf16 autocast, fused AdamW, pinned non-blocking copies, no host
synchronisation inside the step) and correct on the CPU, where the same config
and seed give the same numbers bit for bit, across a stop and a resume too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from diffusion.data import DeviceDataset
from diffusion.runtime import distributed as dist
from diffusion.runtime.device import (
    autocast,
    describe_device,
    resolve_device,
    resolve_precision,
    use_deterministic_algorithms,
)
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec
from diffusion.training import checkpoint as ckpt
from diffusion.training.batches import ResumableBatchSampler, batch_stream
from diffusion.training.config import TrainerConfig
from diffusion.training.ema import EMA
from diffusion.training.interrupt import StopRequest
from diffusion.training.loggers import JsonlLogger, Logger, LoggerGroup
from diffusion.training.objectives import Objective
from diffusion.training.periodic import PeriodicWork
from diffusion.training.state import CheckpointState

log = logging.getLogger(__name__)

EARLY_LOG_STEPS = frozenset(m * 10 ** k for k in range(7) for m in (1, 2, 5))
"""The steps below ``log_every`` that ``trainer.early_logs`` logs as well."""
ETA_AFTER = 10
"""Steps of a launch after which its time per step is measured and the time left said."""


def format_duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class Trainer(CheckpointState, PeriodicWork):
    """Trains ``model`` to predict ``scheduler.training_target`` on noised images.

    ``optimizer`` and ``lr_scheduler`` are factories (Hydra ``_partial_``):
    ``optimizer(params)`` and ``lr_scheduler(optimizer, total_steps=...)``.
    ``evaluator(pipeline) -> dict`` (for example a small FID) runs every
    ``eval_every`` steps on the EMA model; it must draw from its own generators,
    not the global RNG. The checkpoint with the lowest ``best_metric`` is kept as
    ``checkpoints/best.pt``.

    The step and the loop are here; what a checkpoint holds is ``CheckpointState``
    (``training/state.py``), the work between steps (validation, grids, periodic FID, the
    stop checks) is ``PeriodicWork`` (``training/periodic.py``).
    """

    def __init__(self, model: nn.Module, scheduler, optimizer, train_set: Dataset,
                 config: TrainerConfig, *, batch_size: int, run_dir: str | Path,
                 val_set: Dataset | None = None, lr_scheduler=None, logger: Logger | None = None,
                 seed: int = 0, num_workers: int = 0, conditional: bool = False,
                 on_device: bool = False, evaluator=None, sampler: SamplerSpec | None = None,
                 objective: Objective | None = None, latent=None, low_res=None,
                 control=None):
        self.cfg = config
        self.latent = latent  # a latent run's LatentSpace: its grids and FID decode through it
        self.low_res = low_res  # a super-resolution stage's LowResConditioning
        self.control = control  # a ControlNet's ControlImages: its control images from x0
        # what a step computes: t and noise draws, the target, the per-sample loss weights
        self.objective = Objective(scheduler) if objective is None else objective
        self.sampler = SamplerSpec() if sampler is None else sampler  # grids' sampler
        self.device = resolve_device(config.device, key="trainer.device")
        self.precision = resolve_precision(config.precision, self.device)
        if config.deterministic:
            use_deterministic_algorithms(True)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        self.scheduler = scheduler
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers = batch_size, num_workers
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.local_batch = batch_size // self.world_size
        self.seed = seed
        self.conditional = conditional
        self.num_train_timesteps = int(scheduler.num_train_timesteps)
        self.sample_shape = tuple(train_set[0][0].shape)

        self._place_model(model)
        self.optimizer = self._build_optimizer(optimizer)
        self.lr_scheduler = (lr_scheduler(self.optimizer, total_steps=config.max_steps)
                             if lr_scheduler is not None else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self._init_data_and_noise(on_device)
        self.evaluator = evaluator
        self._pipeline: DiffusionPipeline | None = None
        self._init_progress()
        self._init_logging(logger)

    # ------------------------------------------------------------------ setup
    def _place_model(self, model: nn.Module) -> None:
        """Put the model on the device in the configured memory format and set up what trains
        it: DDP across processes, its EMA, and the (compiled) forward the step calls."""
        config = self.cfg
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ddp = None
        if self.world_size > 1:  # DDP broadcasts rank 0's weights to every replica
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup, config.ema_every)
        self.forward = self.ddp or self.model
        if config.compile:
            self.forward = torch.compile(self.forward)

    def _init_data_and_noise(self, on_device: bool) -> None:
        """The seeded noise stream the steps draw from (and that checkpoints resume), the
        dataset kept on the device when ``on_device``, and the fixed noise every sample grid
        starts from (its own generator, so grids are comparable across steps)."""
        self.noise_generator = torch.Generator(self.device).manual_seed(self.seed)
        self.device_data = None
        if on_device:  # a latent run's dataset moves its own posteriors
            to_device = getattr(self.train_set, "to_device", None)
            self.device_data = (to_device(self.device) if to_device is not None else
                                DeviceDataset.from_dataset(self.train_set, self.device,
                                                           self.num_workers))
        self.fixed_noise = torch.randn((self.cfg.sample_n, *self.sample_shape),
                                       generator=torch.Generator().manual_seed(self.seed))

    def _init_progress(self) -> None:
        """The progress of a run that has taken no step yet; a resume restores the saved
        counters over these."""
        self.best = math.inf
        self.step = 0
        self._stop_reason: str | None = None  # why this launch stops early (None: it does not)
        self.interrupted_by: str | None = None  # the stop signal, when one ended the launch
        self.eta_hint: str | None = None  # said on a CPU when the estimate is over an hour
        self._fit_started, self._eta_said = 0.0, False
        self.skipped_steps = 0  # fp16 updates the GradScaler skipped (not counted in step)
        self.micro_batches = 0  # batches consumed, skipped steps' too: where the data resumes
        self._start_step = 0
        self._logged_losses: list[float] = []

    def _init_logging(self, logger: Logger | None) -> None:
        """Rank 0 alone writes: it removes what an interrupted save left and logs to
        ``metrics.jsonl`` (and to ``logger``); the other ranks log nowhere."""
        if self.is_main:
            for stale in ckpt.remove_stale_temporaries(self.ckpt_dir):
                log.info("Removed %s, left by a save that was interrupted.", stale.name)
        self.logger = LoggerGroup([JsonlLogger(self.run_dir / "metrics.jsonl"),
                                   *([logger] if logger is not None else [])]
                                  if self.is_main else [])

    def _build_optimizer(self, factory) -> torch.optim.Optimizer:
        """Fused AdamW/Adam (CUDA and CPU kernels) unless the config says otherwise, over the
        parameters that train (a LoRA run's adapter; every one otherwise)."""
        if (self.device.type in ("cuda", "cpu") and isinstance(factory, functools.partial)
                and factory.func in (torch.optim.Adam, torch.optim.AdamW)
                and "fused" not in factory.keywords and "foreach" not in factory.keywords):
            factory = functools.partial(factory, fused=True)
        return factory([p for p in self.model.parameters() if p.requires_grad])

    def batches(self, start_batch: int) -> Iterator:
        """Endless (x, y) batches from global batch ``start_batch`` on, in an order that
        depends only on the seed (so a resumed run sees the batches it would have seen)."""
        sampler = ResumableBatchSampler(len(self.train_set), self.batch_size, seed=self.seed,
                                        start_batch=start_batch, rank=self.rank,
                                        world_size=self.world_size)
        return batch_stream(self.train_set, sampler, self.device, self.noise_generator,
                            self.device_data, self.num_workers)

    # ------------------------------------------------------------- the step
    def _local(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a tensor drawn for the whole global batch."""
        if self.world_size == 1:
            return global_batch
        return global_batch[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]

    def _noised(self, x0: torch.Tensor, generator: torch.Generator, local: bool = True,
                noise: torch.Tensor | None = None):
        """(network input, its time, target, t) for clean ``x0`` (the objective's ``noised``;
        t is what the loss weights read). Timesteps and noise are drawn for the global batch
        on every rank and sliced, so the run does not depend on the process count. ``noise``
        given (reflow's pairs: each image with the noise the model mapped to it) is used
        instead of a draw."""
        n = self.batch_size if local and self.world_size > 1 else x0.shape[0]
        t = self.objective.sample_timesteps(n, self.device, generator)
        if noise is None:
            noise = self.objective.sample_noise((n, *x0.shape[1:]), self.device, generator)
            if n != x0.shape[0]:
                noise = self._local(noise)
        else:
            noise = noise.to(self.device, non_blocking=True).to(x0.dtype)
        if n != x0.shape[0]:
            t = self._local(t)
        return (*self.objective.noised(x0, noise, t), t)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, (y.to(self.device, non_blocking=True) if self.conditional else None)

    def _drop_labels(self, y: torch.Tensor | None, generator: torch.Generator):
        """Classifier-free guidance training: replace ``label_dropout`` of the labels by the
        backbone's null label (index num_classes). Drawn for the global batch from the
        resumable noise stream, after the timesteps and noise, then sliced like them."""
        if y is None or not self.cfg.label_dropout:
            return y
        n = self.batch_size if self.world_size > 1 else y.shape[0]
        drop = self._local(torch.rand(n, device=self.device, generator=generator)
                           < self.cfg.label_dropout)
        return torch.where(drop, torch.full_like(y, self.model.num_classes), y)

    def _extra_inputs(self, x0: torch.Tensor, generator: torch.Generator,
                      local: bool = True) -> dict:
        """The network's inputs beside x: a super-resolution stage's augmented low-resolution
        image and its level, a ControlNet's control image; drawn after the labels' dropout for
        the global batch and sliced like the noise. Nothing for other runs."""
        source = self.low_res if self.low_res is not None else self.control
        if source is None:
            return {}
        if local and self.world_size > 1:
            start = self.rank * self.local_batch
            inputs = source.network_inputs(x0, generator, self.batch_size,
                                           slice(start, start + self.local_batch))
        else:
            inputs = source.network_inputs(x0, generator)
        return {key: value.contiguous(memory_format=self.memory_format) if value.ndim == 4
                else value for key, value in inputs.items()}

    def train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns device tensors
        (mean loss, grad norm) and the seconds spent waiting for data. An fp16 step whose
        gradients overflowed is skipped: ``step`` stays, ``skipped_steps`` counts it."""
        data_time = 0.0
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            start = time.perf_counter()
            x0, y, *paired = next(batches)  # (image, label[, its noise: reflow's pairs])
            self.micro_batches += 1
            data_time += time.perf_counter() - start
            x0, y = self._to_device(x0, y)
            x_in, t_in, target, t = self._noised(x0, self.noise_generator,
                                                 noise=paired[0] if paired else None)
            y = self._drop_labels(y, self.noise_generator)
            extra = self._extra_inputs(x0, self.noise_generator)
            last = micro == self.cfg.grad_accum - 1
            # gradients are all-reduced once per optimizer step, not per micro-batch
            sync = (self.ddp.no_sync() if self.ddp is not None and not last
                    else contextlib.nullcontext())
            with sync:
                with autocast(self.device, self.precision):
                    prediction = self.forward(x_in, t_in, y, **extra)
                loss = self.objective.loss(prediction, target, t) / self.cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.grad_clip or math.inf, foreach=True)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # Under fp16 the GradScaler skips the update when a gradient is inf/NaN, and lowers
        # its scale: that step is not counted, and the LR schedule and EMA do not advance.
        # Seeing the skip takes a host read of the scale, so only fp16 pays this sync (bf16,
        # the CUDA default, and fp32 have no scaler and never skip); the schedule and the step
        # counter live on the host, so a device-side flag could not gate them anyway.
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:
            self.skipped_steps += 1
            if not math.isfinite(loss := total.item()):
                raise self._diverged(f"The loss became {loss}")
            log.info("fp16 gradients overflowed at step %d: update skipped, loss scale now %g "
                     "(%d skipped so far).", self.step, self.scaler.get_scale(),
                     self.skipped_steps)
            return total, grad_norm, data_time
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return total, grad_norm, data_time

    def _last(self) -> bool:
        """Whether this step ends the launch: ``max_steps`` reached or a stop asked for."""
        return self.step == self.cfg.max_steps or self._stop_reason is not None

    def _due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self._last())

    def _log_due(self) -> bool:
        """A log is due: every ``log_every`` steps, the launch's last step, and with
        ``early_logs`` also at steps 1, 2, 5, 10, 20, 50, ... below ``log_every``."""
        every = self.cfg.log_every
        return self._due(every) or (self.cfg.early_logs and 0 < self.step < every
                                    and self.step in EARLY_LOG_STEPS)

    def _check_stop(self, stop: StopRequest, started: float) -> None:
        """Whether to make this step the last: a stop signal arrived (``stop``), or
        ``trainer.max_minutes`` of this launch are spent. One process looks at every step;
        several look at log steps only, where rank 0 decides for every rank (one broadcast),
        so all of them stop at the same step."""
        at_log = bool(self.cfg.log_every) and self.step % self.cfg.log_every == 0
        if self.world_size > 1 and not at_log:
            return
        signal_name = stop.signal
        reason = f"{signal_name} received" if signal_name else None
        if reason is None and self.cfg.max_minutes \
                and time.perf_counter() - started >= 60.0 * self.cfg.max_minutes:
            reason = f"trainer.max_minutes={self.cfg.max_minutes} reached"
        if self.world_size > 1:
            reason, signal_name = dist.broadcast_object((reason, signal_name))
        self._stop_reason, self.interrupted_by = reason, signal_name

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to ``max_steps``, or until a stop signal (``training.interrupt``) or the time
        budget ends the launch with a checkpoint; returns the summary."""
        cfg = self.cfg
        self.model.train()
        batches = self.batches(self.micro_batches)
        bar = tqdm(total=cfg.max_steps, initial=self.step,
                   disable=not cfg.progress or not self.is_main,
                   dynamic_ncols=True, desc="train")
        wall_start = time.perf_counter()
        self._stop_reason, self.interrupted_by = None, None
        self._fit_started, self._eta_said = wall_start, False
        if self.is_main:
            log.info("%s", self.banner())
        with StopRequest() as stop:
            metrics = self._loop(batches, bar, stop, wall_start)
        bar.close()
        return self._finish(wall_start, metrics)

    def _loop(self, batches: Iterator, bar: tqdm, stop: StopRequest, wall_start: float) -> dict:
        """Steps until ``max_steps`` or a stop (a signal, the time budget); the step that
        ends the launch is logged, sampled and checkpointed. Returns the last logged metrics."""
        cfg = self.cfg
        loss_sum, loss_count, data_time = torch.zeros((), device=self.device), 0, 0.0
        window_start, window_steps = time.perf_counter(), 0
        metrics: dict = {}
        while self.step < cfg.max_steps and self._stop_reason is None:
            before = self.step
            loss, grad_norm, waited = self.train_step(batches)
            if self.step == before:
                continue  # an fp16 step the GradScaler skipped: nothing new is due
            self._check_stop(stop, wall_start)
            loss_sum += loss
            loss_count += 1
            data_time += waited
            window_steps += 1
            bar.update(1)
            if self._log_due() or self._due(cfg.ckpt_every):
                metrics = self._train_metrics(loss_sum / loss_count, grad_norm, window_steps,
                                              data_time, window_start)
                loss_sum.zero_()
                loss_count, data_time, window_steps = 0, 0.0, 0
                self._log_metrics(metrics, bar)
            elif self._due(cfg.val_every):
                self.logger.log_metrics({"val/loss": self.validation_loss()}, self.step)
            self._run_due_work()
            if window_steps == 0:
                window_start = time.perf_counter()  # periodic work is not training time
        return metrics

    def _train_metrics(self, window_loss: torch.Tensor, grad_norm: torch.Tensor, steps: int,
                       data_time: float, window_start: float) -> dict:
        """The training metrics of the ``steps`` since ``window_start``, whose mean loss is
        ``window_loss``. The loss is read (averaged over ranks) here only, so that the steps
        between logs never wait for the host."""
        mean_loss = dist.all_mean(window_loss).item()  # one sync per log
        self._check_loss(mean_loss)
        elapsed = time.perf_counter() - window_start
        images = steps * self.cfg.grad_accum * self.batch_size  # all ranks
        metrics = {"train/loss": mean_loss, "train/grad_norm": grad_norm.item(),
                   "train/lr": self.optimizer.param_groups[0]["lr"],
                   "train/images_per_sec": images / elapsed,
                   "train/data_time_frac": data_time / elapsed,
                   "train/epoch": self.micro_batches * self.batch_size / len(self.train_set)}
        if self.scaler.is_enabled():
            metrics["train/skipped_steps"] = self.skipped_steps
        return metrics

    def _log_metrics(self, metrics: dict, bar: tqdm) -> None:
        """Log ``metrics``, with the validation loss when that is due at the same step, and
        show the loss and throughput on the progress bar."""
        if self._due(self.cfg.val_every):
            metrics["val/loss"] = self.validation_loss()
        self.logger.log_metrics(metrics, self.step)
        self._say_eta()
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                        img_s=f"{metrics['train/images_per_sec']:.0f}")

    def banner(self) -> str:
        """One line saying what trains where: the network and its size, the device, the
        precision, the batch and the steps of this launch."""
        params = sum(p.numel() for p in self.model.parameters())
        trains = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        size = (f"{params / 1e6:.2f}M parameters" if trains == params else
                f"{params / 1e6:.2f}M parameters, {trains / 1e3:.1f}k of them training")
        where = describe_device(self.device)
        if self.world_size > 1:
            where = f"{self.world_size} processes on {where}"
        budget = (f", at most {self.cfg.max_minutes:g} min" if self.cfg.max_minutes else "")
        return (f"Training {type(self.model).__name__} ({size}) on "
                f"{where}, {self.precision}, batch {self.batch_size * self.cfg.grad_accum}: "
                f"steps {self.step} -> {self.cfg.max_steps}{budget}.")

    def _say_eta(self) -> None:
        """Once this launch has trained ETA_AFTER steps (or sooner, when the run ends before
        that): the measured time per step and the estimate to ``max_steps``; on a CPU where
        that is over an hour, ``eta_hint`` too (the command's word on a recipe that fits)."""
        done = self.step - self._start_step
        if self._eta_said or not self.is_main or done < min(
                ETA_AFTER, self.cfg.max_steps - self._start_step):
            return
        self._eta_said = True
        per_step = (time.perf_counter() - self._fit_started) / done
        left = per_step * (self.cfg.max_steps - self.step)
        budget = (f" (trainer.max_minutes={self.cfg.max_minutes:g} stops it sooner)"
                  if self.cfg.max_minutes and left > 60 * self.cfg.max_minutes else "")
        log.info("%.3g s per step over the first %d: about %s to step %d%s.", per_step, done,
                 format_duration(left), self.cfg.max_steps, budget)
        if self.device.type == "cpu" and left > 3600 and self.eta_hint and not budget:
            log.warning("%s", self.eta_hint)

    def _run_due_work(self) -> None:
        """The work due after this step besides logging: a sample grid, an evaluation and a
        checkpoint, in that order (so the checkpoint holds the best metric just evaluated)."""
        cfg = self.cfg
        if self._due(cfg.sample_every):  # every rank samples a share of the grid
            grid = self.sample_grid()
            if grid is not None:
                self.logger.log_image("samples", grid, self.step)
        if self.evaluator is not None and self._due(cfg.eval_every):
            self.evaluate()
        if self._due(cfg.ckpt_every) or self._last():  # the launch's last step always saves
            self._check_replicas()
            if self.is_main:
                self.save_checkpoint()

    def _finish(self, wall_start: float, metrics: dict) -> dict:
        """The run's summary (the last logged metrics among it), saying why it stopped when
        the time budget ended it, written to ``summary.json`` by rank 0."""
        cfg = self.cfg
        summary = {"step": self.step, "wall_time_sec": time.perf_counter() - wall_start,
                   "world_size": self.world_size, **metrics}
        if self._stop_reason is not None:
            summary["stopped"] = self._stop_reason
            if self.interrupted_by:
                summary["interrupted"] = self.interrupted_by
            log.info("Stopped at step %d: %s; resume=%s continues towards max_steps=%d.",
                     self.step, self._stop_reason, self.run_dir, cfg.max_steps)
        if self.is_main and self.step > self._start_step:  # a no-op keeps the old summary
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        dist.barrier()  # no rank leaves while rank 0 still writes
        return summary
