"""Euler samplers in sigma space (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"; k-diffusion's ``sample_euler``/``sample_euler_ancestral``).

In sigma space x = x_0 + sigma * eps the probability-flow ODE is dx/dsigma = (x - x_0_hat) /
sigma. ``EulerDiscreteScheduler`` takes one Euler step of it per model evaluation (first
order, NFE = steps). ``EulerAncestralDiscreteScheduler`` steps the ODE down to
sigma_down and adds fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 =
sigma_next^2 and sigma_up the std of the ancestral (DDPM-like) step: a first-order
discretisation of the reverse SDE, one model evaluation per step.

Agreement with diffusers' ``EulerDiscreteScheduler`` and ``EulerAncestralDiscreteScheduler``
(same settings): same timesteps (float, fractional for ``linspace`` and Karras sigmas),
sigmas, ``init_noise_sigma``, ``scale_model_input``, steps and noise draws; sigmas in
float64 rather than float32, and the step written as (sigma_next / sigma) x + (1 -
sigma_next / sigma) x_0_hat: diffusers' x + (sigma_next - sigma) (x - x_0_hat) / sigma, in
float32, cancels x ~ 2e4 down to ~20 from the cosine schedule's sigma_max = 20291 and
loses 1e-4 of the result there. Differences: ``prediction_type="sample"`` works for the
ancestral sampler too (diffusers raises ``NotImplementedError``); the last ancestral step,
whose sigma_up is 0, draws no noise; ``clip_sample`` clips x_0_hat (diffusers' Euler
samplers have no clipping). Not implemented: Euler's churn (``s_churn``, ...), other
sigma schedules (exponential, beta), ``final_sigmas_type`` (the last step lands on 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.sigmas import SigmaScheduler


class EulerDiscreteScheduler(SigmaScheduler, sampler_name="euler"):
    """Euler's method on the probability-flow ODE in sigma space; deterministic, first order,
    one model evaluation per step. Arguments as in diffusers.

    ``use_karras_sigmas``: n sigmas spaced as Karras et al. between the first and last
    sigma of ``timestep_spacing`` (their timesteps fractional), instead of those sigmas.
    """

    def __init__(self, *, use_karras_sigmas: bool = False, **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names)."""
        super().__init__(**process)
        self.use_karras_sigmas = self._check_flag("use_karras_sigmas", use_karras_sigmas)
        self._config["use_karras_sigmas"] = use_karras_sigmas

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None):
        """Tables for ``num_inference_steps`` steps, or for custom descending ``timesteps``
        or ``sigmas`` (each step's sigma and the final one), one of the three, as diffusers:
        float32 timesteps on ``device``, and the sigmas of those steps followed by 0."""
        timesteps, sigmas = self._sigma_schedule(num_inference_steps, timesteps, sigmas,
                                                 self.use_karras_sigmas)
        self._set_tables(sigmas, timesteps, len(timesteps), device, torch.float32)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, *, generator: torch.Generator | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """One Euler step from the current sigma to the next: x + (sigma_next - sigma) *
        (x - x_0_hat) / sigma. ``generator`` is accepted for a uniform loop and not used."""
        i = self._current(timestep)
        sigma, sigma_next = self._sigma[i], self._sigma[i + 1]
        x0 = self._denoised(model_output, sample, sigma)
        ratio = sigma_next / sigma
        prev_sample = ratio * sample + (1.0 - ratio) * x0
        self._step_index += 1
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)


class EulerAncestralDiscreteScheduler(SigmaScheduler, sampler_name="euler_a"):
    """Euler ancestral sampling in sigma space: an Euler step to sigma_down, then noise of
    std sigma_up; stochastic, first order, one model evaluation per step. Arguments as in
    diffusers (which has no Karras sigmas for this sampler)."""

    @property
    def stochastic(self) -> bool:
        return True

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[float] | None = None,
                      sigmas: Sequence[float] | None = None):
        """Tables for ``num_inference_steps`` steps, or for custom ``timesteps`` or ``sigmas``
        as ``EulerDiscreteScheduler`` takes them (diffusers' ancestral sampler takes only the
        number): float32 timesteps on ``device``, and the sigmas of those steps followed by 0."""
        timesteps, sigmas = self._sigma_schedule(num_inference_steps, timesteps, sigmas)
        self._set_tables(sigmas, timesteps, len(timesteps), device, torch.float32)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | None = None, *,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """One ancestral step: sigma_up = sigma_next * sqrt(1 - sigma_next^2 / sigma^2),
        sigma_down = sqrt(sigma_next^2 - sigma_up^2); x moves along (x - x_0_hat) / sigma
        to sigma_down, then gains sigma_up * z, z ~ N(0, I) drawn from ``generator``."""
        i = self._current(timestep)
        sigma, sigma_next = self._sigma[i], self._sigma[i + 1]
        x0 = self._denoised(model_output, sample, sigma)
        ratio = (sigma_next / sigma) ** 2  # sigma_down / sigma, sigma_down = sigma_next^2 / sigma
        sigma_up = sigma_next * math.sqrt(1.0 - ratio)
        prev_sample = ratio * sample + (1.0 - ratio) * x0
        if sigma_up > 0:
            prev_sample = prev_sample + sigma_up * self._randn(sample, generator)
        self._step_index += 1
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)
