"""The EDM process (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models") as a ``Process``: x = x_0 + sigma eps (alpha = 1), with time t in [0, 1]
placed on the rho = 7 ramp

    sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,

so that evenly spaced times are EDM's sampling schedule (eq. 5) and the samplers of this
package that step evenly in t (``ode``, ``pc``) walk it. ``sigma_data`` = 0.5 (EDM's) makes
v-prediction EDM's preconditioning exactly: the network sees c_in x = x / sqrt(sigma^2 +
sigma_data^2) and outputs F = -v, D = c_skip x + c_out F with c_skip = sigma_data^2 / (sigma^2 +
sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2) (``Process``).

The network is told EDM's c_noise = ln(sigma) / 4 mapped affinely onto the backbones' time range:
``model_time`` = (model_steps - 1) (ln sigma - ln sigma_min) / (ln sigma_max - ln sigma_min),
0 at sigma_min and 999 at sigma_max (the sinusoidal time embeddings of the UNets here are made
for that range; an affine map of c_noise is the same information). Training draws ln sigma
from N(P_mean, P_std^2) (``objective=edm``), sigma beyond [sigma_min, sigma_max] included: t,
model_time and the weights extend past [0, 1] by the same formulas.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_number
from diffusion.processes.base import Process, Tensor, as_time


class EDMProcess(Process):
    """EDM's process: alpha = 1, sigma(t) on the rho ramp from ``sigma_min`` (t = 0) to
    ``sigma_max`` (t = 1); see the module docstring."""

    name = "edm"
    extends_past_ends = True

    def __init__(self, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 sigma_data: float = 0.5, t_min: float = 0.0, **options: Any):
        options.setdefault("prediction_type", "v_prediction")
        super().__init__(t_min=t_min, sigma_data=sigma_data, **options)
        self.sigma_min = check_number("sigma_min", sigma_min, above=0)
        self.sigma_max = check_number("sigma_max", sigma_max, above=self.sigma_min,
                                      note=" (above sigma_min)")
        self.rho = check_number("rho", rho, above=0)
        self._lo, self._hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "rho": self.rho, "sigma_data": self.sigma_data}

    def _ramp(self, t: float | Tensor) -> Tensor:
        return self._lo + as_time(t) * (self._hi - self._lo)

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def sigma(self, t):
        return self._ramp(t) ** self.rho

    def d_log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def d_sigma2(self, t):
        ramp = self._ramp(t)
        return 2 * ramp**self.rho * self.rho * ramp ** (self.rho - 1) * (self._hi - self._lo)

    def time_of(self, level):
        return (as_time(level) ** (1 / self.rho) - self._lo) / (self._hi - self._lo)

    def model_time(self, t):
        log_range = math.log(self.sigma_max / self.sigma_min)
        return (self.model_steps - 1) * (torch.log(self.sigma(t)) - math.log(self.sigma_min)) \
            / log_range

    def time_of_model_time(self, model_time):
        log_range = math.log(self.sigma_max / self.sigma_min)
        level = torch.exp(math.log(self.sigma_min)
                          + as_time(model_time) / (self.model_steps - 1) * log_range)
        return self.time_of(level)

    @property
    def prior_std(self) -> float:
        """sigma_max: EDM starts from N(0, sigma_max^2 I)."""
        return self.sigma_max
