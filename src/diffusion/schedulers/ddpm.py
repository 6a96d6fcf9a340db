"""DDPM ancestral sampling (Ho et al. 2020), respaced as in improved DDPM (Nichol & Dhariwal 2021).

One reverse step draws x_prev ~ N(posterior_mean(x_0_hat, x_t), variance), with x_0_hat
the model's estimate of x_0. After ``set_timesteps(n)`` with n < T the chain visits
only n timesteps; the step from t to prev then uses that chain's own beta,
1 - alpha_bar(t) / alpha_bar(prev), which is how improved DDPM respaces (its betas
recomputed from alphas_cumprod at the kept timesteps). ``betas`` and ``add_noise``
keep the training process.

Agreement with diffusers' ``DDPMScheduler`` (same settings): identical coefficients
and noise draws at every step that lands on a timestep >= 0. The last step returns
the posterior mean without noise, as in DDPM and improved DDPM; diffusers instead
adds noise whenever the current t > 0, which only matters when the last timestep
is not 0 (``trailing`` spacing, ``steps_offset``): negligible for ``fixed_small``
(std <= 1e-10) but sqrt(1 - alpha_bar(t)) for ``fixed_large``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_choice
from diffusion.schedulers.base import NoiseScheduler, SchedulerOutput

VARIANCE_TYPES = ("fixed_small", "fixed_large")


class DDPMScheduler(NoiseScheduler, sampler_name="ddpm"):
    """DDPM noise process and ancestral reverse step; arguments as in diffusers.

    ``variance_type``: ``fixed_small`` is the posterior variance beta_tilde (the
    lower bound of DDPM, right when x_0 is one point); ``fixed_large`` is the
    chain's beta_t (the upper bound, right when x_0 ~ N(0, I)).
    """

    def __init__(self, *, variance_type: str = "fixed_small", **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names)."""
        super().__init__(**process)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self.variance_type = variance_type
        self._config["variance_type"] = variance_type

    @property
    def stochastic(self) -> bool:
        return True

    def variance(self, timestep: int | torch.Tensor) -> float:
        """Variance of the noise the step from ``timestep`` adds (float64 Python float).

        ``fixed_small``: the posterior variance, clamped at 1e-20 like diffusers'
        ``fixed_small`` (whose ``fixed_small_log`` gives the same standard
        deviation). At the chain's last step it is 0; there improved DDPM clips
        its log to the value one step earlier, and so do we. That value only
        matters for likelihood terms: the last step adds no noise.
        ``fixed_large``: the chain's beta, 1 - alpha_bar(t) / alpha_bar(prev).
        """
        t, prev = self._step_pair(timestep)
        if self.variance_type == "fixed_large":
            return 1.0 - self.alpha_bar(t) / self.alpha_bar(prev)
        if prev < 0 and len(self.timesteps) > 1:
            return self.variance(self._steps[-2])
        return max(self.posterior_variance(t), 1e-20)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral step from x_t = ``sample`` at ``timestep`` to the next timestep.

        x_0_hat is clipped to +-clip_sample_range when ``clip_sample``; noise is
        drawn from ``generator`` except at the last step, which returns the mean.
        """
        t, prev = self._step_pair(timestep)
        x0 = self._clip(self.pred_original_sample(model_output, t, sample))
        prev_sample = self.posterior_mean(x0, sample, t)
        if prev >= 0:
            prev_sample = prev_sample + math.sqrt(self.variance(t)) * self._randn(sample, generator)
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)
