"""Model + scheduler -> images. Used by the trainer, ``diffusion.sample``,
``diffusion.evaluate`` and notebooks alike, so every path samples the same way.

>>> pipe = DiffusionPipeline.from_run("runs/mnist/2026-01-01_12-00-00")
>>> images = pipe(16, steps=50)          # (16, C, H, W) in [-1, 1]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.device import autocast, resolve_device, resolve_precision
from diffusion.schedulers import DDIMScheduler, DDPMScheduler

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_sampler(train_scheduler, sampler: str):
    """A sampling scheduler of kind ``sampler`` over the training noise schedule.

    The betas, prediction type and clipping come from the scheduler the model
    was trained with; only the reverse-step algorithm changes.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}.")
    cls = SAMPLERS[sampler]
    if isinstance(train_scheduler, cls):
        return cls.from_config(dict(train_scheduler.config))
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in train_scheduler.config.items() if k in accepted})


@dataclass
class PipelineOutput:
    images: torch.Tensor                   # (n, C, H, W) in [-1, 1], float32 on the CPU
    chain: torch.Tensor | None = None      # (n, frames, C, H, W): x_t along the reverse process
    chain_timesteps: list[int] | None = None


class DiffusionPipeline:
    """Samples images from a denoising ``model`` with a DDPM or DDIM reverse process."""

    def __init__(self, model: nn.Module, scheduler, sample_shape: tuple[int, int, int],
                 device: str | torch.device = "auto", precision: str = "auto"):
        self.model = model
        self.scheduler = scheduler
        self.sample_shape = tuple(sample_shape)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model.to(self.device).eval()

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str | Path | None = None,
                 device: str | torch.device = "auto", precision: str = "auto"):
        """Build from a run folder: its config, and the EMA weights of its newest checkpoint."""
        from diffusion.rundir import load_run  # local: keeps plain-library use Hydra-free

        model, scheduler, cfg = load_run(run, checkpoint=checkpoint)
        shape = (int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
        return cls(model, scheduler, shape, device=device, precision=precision)

    @torch.no_grad()
    def __call__(self, n: int, steps: int | None = None, sampler: str = "ddim", eta: float = 0.0,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, batch_size: int = 256,
                 return_chain: bool = False, chain_frames: int = 20,
                 progress: bool = False) -> PipelineOutput:
        """Draw ``n`` samples with ``steps`` reverse steps (default: all training steps).

        ``noise`` fixes the starting x_T (used for comparable grids across training);
        ``generator`` makes the whole draw reproducible. Batches of ``batch_size``: x_T is
        drawn for all ``n`` first, so deterministic samplers (DDIM, eta=0) give the same
        images for any batch size; DDPM's per-step noise follows the batching.
        """
        sched = make_sampler(self.scheduler, sampler)
        steps = steps or sched.config["num_train_timesteps"]
        sched.set_timesteps(steps, device=self.device)
        if noise is not None and noise.shape[0] != n:
            raise ValueError(f"noise has {noise.shape[0]} samples but n={n}.")
        if noise is None:  # drawn whole, so x_T does not depend on batch_size
            noise = torch.randn((n, *self.sample_shape), generator=generator,
                                device=generator.device if generator is not None else "cpu")
        images, chains = [], []
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="sampling", disable=not progress or len(starts) == 1):
            b = min(batch_size, n - start)
            x = noise[start:start + b].to(self.device)
            yb = None if y is None else y[start:start + b].to(self.device)
            out, chain = self._denoise(sched, x, yb, generator, eta, return_chain, chain_frames)
            images.append(out.float().cpu())
            if chain is not None:
                chains.append(chain)
        return PipelineOutput(
            images=torch.cat(images),
            chain=torch.cat(chains) if chains else None,
            chain_timesteps=self._chain_timesteps(sched, chain_frames) if return_chain else None,
        )

    @staticmethod
    def _chain_indices(num_steps: int, frames: int) -> list[int]:
        """Indices into the reverse loop at which x_t is recorded (always the last)."""
        frames = max(2, min(frames, num_steps + 1))
        picks = torch.linspace(0, num_steps, frames).round().long().tolist()
        return sorted(set(picks))

    def _chain_timesteps(self, sched, frames: int) -> list[int]:
        ts = [int(t) for t in sched.timesteps] + [-1]  # -1 marks the final x_0
        return [ts[i] for i in self._chain_indices(len(ts) - 1, frames)]

    def _denoise(self, sched, x, y, generator, eta, return_chain, chain_frames):
        keep = set(self._chain_indices(len(sched.timesteps), chain_frames)) if return_chain else ()
        chain = [x.float().cpu()] if 0 in keep else []
        step_kwargs = {"eta": eta} if isinstance(sched, DDIMScheduler) else {}
        for i, t in enumerate(sched.timesteps):
            t_batch = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.full(
                (x.shape[0],), int(t), device=self.device)
            with autocast(self.device, self.precision):
                model_output = self.model(x, t_batch, y)
            x = sched.step(model_output.float(), t, x, generator=generator,
                           **step_kwargs).prev_sample
            if i + 1 in keep:
                chain.append(x.float().cpu())
        return x, (torch.stack(chain, dim=1) if return_chain else None)
