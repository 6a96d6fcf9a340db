"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients
of the Data Distribution", Algorithm 1), the sampler of noise-conditional score networks
(NCSN), in the scheduler API of this package.

Over L noise levels sigma_1 > ... > sigma_L (``num_inference_steps`` = L times evenly spaced
from 1 to t_min: geometric sigmas for a VE process), T = ``steps_per_level`` Langevin steps at
each level,

    x <- x + (a_i / 2) score(x, sigma_i) + sqrt(a_i) z,   a_i = step_lr sigma_i^2 / sigma_L^2,

so every level moves by the same signal-to-noise ratio. ``denoise=True`` ends with one more
evaluation at sigma_L and returns E[x_0 | x] = (x + sigma_L^2 score) / alpha (Tweedie's
formula: the "denoising jump" of Jolicoeur-Martineau et al. 2021, Song & Ermon 2020), which
removes the sigma_L noise the last level leaves. NFE = L T (+ 1).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusion.checks import check_choice, check_int, check_number
from diffusion.processes.base import Process
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.continuous import ContinuousSampler, checked_process
from diffusion.schedulers.noise import Generators, randn_tensor

Tensor = torch.Tensor


class AnnealedLangevinScheduler(ContinuousSampler, sampler_name="ald"):
    """Annealed Langevin dynamics over ``process``'s noise levels; see the module docstring.
    Defaults: Song & Ermon's T = 100 would be 1,000 evaluations at L = 10; ``steps_per_level``
    is 5 here and ``step_lr`` their 2e-5 (tuned for sigma_L = 0.01)."""

    stochastic = True

    def __init__(self, process: Process | None = None, *, steps_per_level: int = 5,
                 step_lr: float = 2e-5, denoise: bool = True):
        self.process = checked_process(process)
        self.steps_per_level = check_int("steps_per_level", steps_per_level)
        self.step_lr = check_number("step_lr", step_lr, above=0)
        self.denoise = check_choice("denoise", denoise, (True, False))
        self._times: list[float] = []
        self._calls: list[tuple[bool, float]] = []  # (the denoising call?, its time)
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._index = 0

    @property
    def config(self) -> dict[str, Any]:
        return {"steps_per_level": self.steps_per_level, "step_lr": self.step_lr,
                "denoise": self.denoise}

    @property
    def init_noise_sigma(self) -> float:
        return self._process().prior_std

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """L = ``num_inference_steps`` levels; ``timesteps`` lists the L T (+ 1) evaluations."""
        levels = check_int("num_inference_steps", num_inference_steps)
        t_min = self._process().t_min
        self._times = [1.0 - i * (1.0 - t_min) / max(levels - 1, 1) for i in range(levels)]
        self._calls = [(False, t) for t in self._times for _ in range(self.steps_per_level)]
        if self.denoise:
            self._calls.append((True, self._times[-1]))
        self.timesteps = self.process.model_time(torch.tensor(
            [t for _, t in self._calls], dtype=torch.float64)).float().to(device)
        self.num_inference_steps = levels
        self._index = 0

    @property
    def state_positions(self) -> list[int]:
        return list(range(len(self._calls) + 1))

    def known_state(self, x0: Tensor, noise: Tensor, k: int) -> Tensor:
        """The k-th state (before call k) for the known image ``x0``: x0 noised to that call's
        level (the last state, and the denoising call's input at t_min, likewise; after it:
        ``x0``)."""
        if k >= len(self._calls):
            return x0
        return self._process().add_noise(x0, noise, self._calls[k][1])

    def _call(self) -> tuple[bool, float]:
        if self._index >= len(self._calls):
            raise ValueError("all steps of this run are done; call set_timesteps(n) to sample "
                             "again.")
        return self._calls[self._index]

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        _, t = self._call()
        return sample * float(self.process.c_in(t))

    def step(self, model_output: Tensor, timestep, sample: Tensor, *,
             generator: Generators = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One Langevin step at the current level, or the final denoising."""
        denoising, t = self._call()
        x0, _ = self.process.pred_x0_eps(model_output, sample, t)
        if denoising:
            prev = x0
        else:
            score = self.process.score(model_output, sample, t)
            sigma_last = float(self.process.sigma(self._times[-1]))
            a = self.step_lr * (float(self.process.sigma(t)) / sigma_last) ** 2
            noise = randn_tensor(sample.shape, generator, sample.device, sample.dtype)
            prev = sample + 0.5 * a * score + a**0.5 * noise
        self._index += 1
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return out if return_dict else tuple(out)
