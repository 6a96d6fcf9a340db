"""DDIM sampling (Song, Meng & Ermon 2021): a non-Markovian reverse process with the same marginals.

x_prev = sqrt(a_prev) x_0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z, with
sigma = eta * sqrt(posterior variance) (eq. 12 and 16). ``eta = 0`` is the
deterministic sampler (a discretised probability-flow ODE), ``eta = 1`` gives DDPM's
``fixed_small`` step in distribution. Because the DDIM step stays valid between any
two timesteps, few steps work without retraining; with very few steps the
discretisation shrinks the spread of the samples, even for an exact model.

Agreement with diffusers' ``DDIMScheduler`` (same settings): same coefficients,
clipping (x_0_hat clipped, eps_hat not re-derived: ``use_clipped_model_output=False``)
and noise draws. diffusers computes the previous timestep as t - T // n, which
differs from the timesteps list for ``linspace`` spacing and for ``trailing`` when
n does not divide T; we always follow the list.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_number
from diffusion.schedulers.base import NoiseScheduler, SchedulerOutput


def _check_eta(eta: float) -> float:
    return check_number("eta", eta, 0, 1)


class DDIMScheduler(NoiseScheduler, sampler_name="ddim"):
    """DDIM noise process and reverse step; arguments as in diffusers.

    ``set_alpha_to_one``: the last step lands on alpha_bar = 1 (a clean x_0) when
    True, on alpha_bar(0) when False. ``eta`` is the default for ``step``.
    """

    def __init__(self, *, eta: float = 0.0, set_alpha_to_one: bool = True, **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names)."""
        super().__init__(**process)
        if set_alpha_to_one not in (True, False):
            raise ValueError(f"set_alpha_to_one must be True or False; got {set_alpha_to_one!r}.")
        self.eta = _check_eta(eta)
        self.set_alpha_to_one = set_alpha_to_one
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else self.alpha_bar(0)
        self._config.update(eta=eta, set_alpha_to_one=set_alpha_to_one)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | None = None,
        *,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One DDIM step from x_t = ``sample`` at ``timestep`` to the next timestep.

        ``eta`` (fourth, as in diffusers) overrides the constructor's; noise is drawn from
        ``generator`` only when eta > 0. What follows ``eta`` is keyword-only, so that no
        argument lands in another's place unnoticed. ``return_dict=False``: a tuple.
        """
        eta = self.eta if eta is None else _check_eta(eta)
        t, prev = self._step_pair(timestep)
        a_prev = self.alpha_bar(prev)
        x0 = self._clip(self.pred_original_sample(model_output, t, sample))
        eps = self.pred_epsilon(model_output, t, sample)
        sigma = eta * math.sqrt(self.posterior_variance(t))
        direction = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0))
        prev_sample = math.sqrt(a_prev) * x0 + direction * eps
        if eta > 0:
            prev_sample = prev_sample + sigma * self._randn(sample, generator)
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)
