"""The three SDEs of Song et al. 2021 ("Score-Based Generative Modeling through Stochastic
Differential Equations", section 3.4 and appendix B), as ``Process`` instances.

* VP (variance preserving; DDPM's continuous limit): beta(t) = beta_min + t (beta_max -
  beta_min), log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, sigma^2 = 1 -
  alpha^2; f = -beta / 2, g^2 = beta.
* sub-VP: the same alpha, sigma^2 = (1 - alpha^2)^2; f = -beta / 2, g^2 = beta (1 - alpha^4).
  Its variance stays below VP's at every t (likelihoods in the paper).
* cosine VP: alpha(t) = cos(phi(t)) / cos(phi(0)) with Nichol & Dhariwal's phi, sigma^2 = 1 -
  alpha^2 (``CosineVPProcess``): DDPM's cosine table in continuous time.
* VE (variance exploding; NCSN's continuous limit): alpha = 1, sigma(t) = sigma_min
  (sigma_max / sigma_min)^t; f = 0, g^2 = d sigma^2 / dt = 2 sigma^2 log(sigma_max / sigma_min).
  ``sigma_max`` should be about the largest distance between two training images (Song &
  Ermon 2020, technique 1): ``sigma_max_from_data`` measures it.

Defaults are the paper's: VP beta in [0.1, 20], t_min = 1e-3 for VP and sub-VP, sigma in
[0.01, 50] (its CIFAR-10 value) and t_min = 1e-5 for VE.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_number
from diffusion.processes.base import Process, Tensor, as_time


class VPProcess(Process):
    """The VP SDE with a linear beta(t) (DDPM's schedule in continuous time)."""

    name = "vp"

    def __init__(self, *, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 **options: Any):
        super().__init__(t_min=t_min, **options)
        self.beta_min = check_number("beta_min", beta_min, above=0)
        self.beta_max = check_number("beta_max", beta_max, above=self.beta_min,
                                     note=" (above beta_min)")

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: float | Tensor) -> Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: float | Tensor) -> Tensor:
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return (-torch.expm1(2.0 * self._log_alpha(t))).sqrt()  # sqrt(1 - alpha^2), exact near 0

    def d_log_alpha(self, t):
        return -0.5 * self.beta(t)

    def d_sigma2(self, t):
        return self.beta(t) * torch.exp(2.0 * self._log_alpha(t))  # d(1 - alpha^2)/dt


class SubVPProcess(VPProcess):
    """The sub-VP SDE: VP's alpha(t), sigma(t) = 1 - alpha(t)^2."""

    name = "subvp"

    def sigma(self, t):
        return -torch.expm1(2.0 * self._log_alpha(t))

    def d_sigma2(self, t):
        one_minus = -torch.expm1(2.0 * self._log_alpha(t))
        return 2.0 * one_minus * self.beta(t) * torch.exp(2.0 * self._log_alpha(t))


class CosineVPProcess(Process):
    """A VP process with Nichol & Dhariwal's cosine schedule in continuous time:
    alpha(t) = cos(phi(t)) / cos(phi(0)), phi(t) = (t t_end + s) / (1 + s) pi / 2, sigma^2 =
    1 - alpha^2. DDPM's ``beta_schedule="cosine"`` table is alpha^2 at t t_end = (i + 1) / T
    (where its betas are not clipped at 0.999). ``t_end`` < 1 keeps alpha(1) above 0 (at
    t_end = 1 the log-SNR would be -inf): 0.9946, DPM-Solver's end of this schedule, gives
    alpha(1) = 0.0084, log(alpha^2 / sigma^2) = -9.6. f = d log alpha / dt = -t_end pi /
    (2 (1 + s)) tan(phi), g^2 = -2 f (VP's beta(t))."""

    name = "vp_cosine"

    def __init__(self, *, s: float = 0.008, t_end: float = 0.9946, t_min: float = 1e-3,
                 **options: Any):
        super().__init__(t_min=t_min, **options)
        self.s = check_number("s", s, 0, None)
        self.t_end = check_number("t_end", t_end, above=0, below=1.0)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "s": self.s, "t_end": self.t_end}

    def _phi(self, t: float | Tensor) -> Tensor:
        return (as_time(t) * self.t_end + self.s) / (1 + self.s) * (math.pi / 2)

    def _log_alpha(self, t: float | Tensor) -> Tensor:
        return torch.log(torch.cos(self._phi(t))) - math.log(math.cos(float(self._phi(0.0))))

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return (-torch.expm1(2.0 * self._log_alpha(t))).sqrt()

    def d_log_alpha(self, t):
        return -torch.tan(self._phi(t)) * (self.t_end * math.pi / (2 * (1 + self.s)))

    def d_sigma2(self, t):
        return -2.0 * self.d_log_alpha(t) * torch.exp(2.0 * self._log_alpha(t))


class VEProcess(Process):
    """The VE SDE: x_t = x_0 + sigma(t) eps with sigma geometric from sigma_min to sigma_max.
    ``sigma_max=None`` stands for "measured from the training data" (``sigma_max_from_data``),
    which the train command does before anything uses the process."""

    name = "ve"

    def __init__(self, *, sigma_min: float = 0.01, sigma_max: float | None = 50.0,
                 t_min: float = 1e-5, **options: Any):
        super().__init__(t_min=t_min, **options)
        self.sigma_min = check_number("sigma_min", sigma_min, above=0)
        self.sigma_max = sigma_max if sigma_max is None else check_number(
            "sigma_max", sigma_max, above=self.sigma_min, note=" (above sigma_min)")

    @property
    def _log_ratio(self) -> float:
        if self.sigma_max is None:
            raise ValueError("sigma_max is not set yet: give a number, or train with "
                             "sigma_max=null to measure it from the training images.")
        return math.log(self.sigma_max / self.sigma_min)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def alpha(self, t):
        return torch.ones_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def d_log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def d_sigma2(self, t):
        return 2.0 * self._log_ratio * self.sigma(t) ** 2


def sigma_max_from_data(images: Tensor, max_images: int = 5000) -> float:
    """The largest Euclidean distance between two of ``images`` (N, ...) (the first
    ``max_images``): Song & Ermon's choice of sigma_max, so that the prior covers every pair of
    training points."""
    flat = images[:max_images].flatten(1).double()
    largest = 0.0
    for chunk in flat.split(512):
        largest = max(largest, float(torch.cdist(chunk, flat).max()))
    return largest
