"""Heun's method in sigma space (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 1 without churn).

Each step from sigma to sigma_next takes an Euler step of dx/dsigma = (x - x_0_hat) / sigma,
evaluates the model again at the predicted point and steps from x with the mean of the two
slopes: second order, two model evaluations per step, except the last step to sigma = 0,
which is a plain Euler step (the slope is undefined at 0). n steps cost 2n - 1 model
evaluations. As in diffusers, ``timesteps`` lists every evaluation: [t_0, t_1, t_1, t_2,
t_2, ..., t_{n-1}, t_{n-1}], and ``sigmas`` likewise [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1},
0]; each entry gets one ``scale_model_input`` and one ``step`` call, the second of a pair
finishing the step the first began (``state_in_first_order`` is False in between).

Agreement with diffusers' ``HeunDiscreteScheduler`` (same settings): same timesteps,
sigmas, ``init_noise_sigma``, ``scale_model_input`` and steps; sigmas in float64, the
Euler half written as in euler.py. From a very large sigma (the cosine schedule's 20291)
the second half multiplies the first half's rounding by sigma / (2 sigma_next), ~1600:
float32 results of any implementation then differ in the fourth digit. Differences: the
last Euler step to 0 leaves no half-finished step behind, and ``generator`` is accepted
(and unused) so every sampler runs in one loop. Not implemented: other sigma schedules
(exponential, beta).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.betas import schedule_ends
from diffusion.schedulers.sigmas import SigmaScheduler

HEUN_ENDS = (0.00085, 0.012)
"""diffusers' ``HeunDiscreteScheduler`` defaults for ``beta_start`` and ``beta_end``."""


class HeunDiscreteScheduler(SigmaScheduler, sampler_name="heun"):
    """Heun's second-order method on the probability-flow ODE in sigma space; deterministic,
    two model evaluations per step (one for the last). Arguments as in diffusers.

    ``use_karras_sigmas``: n sigmas spaced as Karras et al. between the first and last
    sigma of ``timestep_spacing`` (their timesteps fractional), instead of those sigmas.
    """

    order = 2

    def __init__(self, *, use_karras_sigmas: bool = False, **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names).
        Left out, ``beta_start``/``beta_end`` are diffusers' defaults for this class, Stable
        Diffusion's 0.00085 and 0.012 (every other sampler's are DDPM's 0.0001 and 0.02);
        ``over`` copies the training process's, as for every sampler."""
        if "beta_start" not in process and "beta_end" not in process and \
                schedule_ends(process.get("beta_schedule", "linear"), 1000) != (None, None):
            process.update(beta_start=HEUN_ENDS[0], beta_end=HEUN_ENDS[1])
        super().__init__(**process)
        self.use_karras_sigmas = self._check_flag("use_karras_sigmas", use_karras_sigmas)
        self._config["use_karras_sigmas"] = use_karras_sigmas
        self._pending: tuple[torch.Tensor, float, torch.Tensor] | None = None

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None):
        """Tables for ``num_inference_steps`` steps (2n - 1 model evaluations), or for custom
        descending ``timesteps`` (as diffusers) or ``sigmas`` (each step's and the final one,
        as diffusers' Euler takes them): float32 timesteps on ``device``, each after the first
        twice, and their sigmas, then the final one."""
        timesteps, sigmas = self._sigma_schedule(num_inference_steps, timesteps, sigmas,
                                                 self.use_karras_sigmas)
        n = len(timesteps)
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        self._set_tables(sigmas, timesteps, n, device, torch.float32)
        self._pending = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call begins a step, False when it finishes one."""
        return self._pending is None

    @property
    def state_positions(self) -> list[int]:
        """The loop positions of whole steps: every other call, and the end."""
        calls = len(self._timestep_values) or len(self.timesteps)
        return [*range(0, calls, 2), calls]

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, *, generator: torch.Generator | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """The first or second half of a Heun step; ``prev_sample`` is the Euler prediction
        at sigma_next after the first, the corrected x at sigma_next after the second."""
        i = self._current(timestep)
        if self._pending is None:
            sigma, sigma_next = self._sigma[i], self._sigma[i + 1]
            x0 = self._denoised(model_output, sample, sigma)
            ratio = sigma_next / sigma
            prev_sample = ratio * sample + (1.0 - ratio) * x0
            if sigma_next > 0:
                self._pending = ((sample - x0) / sigma, sigma_next - sigma, sample)
        else:
            slope, dt, start = self._pending
            sigma_next = self._sigma[i]
            x0 = self._denoised(model_output, sample, sigma_next)
            prev_sample = start + (0.5 * dt) * slope + (0.5 * dt / sigma_next) * (sample - x0)
            self._pending = None
        self._step_index += 1
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)
