"""Flow matching's straight path (Lipman et al. 2023, "Flow Matching for Generative
Modeling"; Liu et al. 2023, "Flow Straight and Fast", rectified flow; Esser et al. 2024, Stable
Diffusion 3) as a ``Process``: x_t = (1 - t) x_0 + t eps, t in [0, 1], diffusers' convention
(t = 0 is the data, t = 1 the noise; Lipman et al. write it the other way round). The network
predicts the velocity u = d x_t / dt = eps - x_0 (``prediction_type="flow_prediction"``), and
sampling integrates dx/dt = u from t = 1 to 0 (``schedulers.velocity``).

alpha' = -1 and sigma' = 1 are given in closed form, so the velocity and its conversions hold
at both ends (the SDE's f = -1 / (1 - t) does not at t = 1, which only the score-SDE samplers
use). The network sees c_in(t) x_t, 1 / sqrt((1 - t)^2 + t^2) (at most sqrt(2)), the same
normalisation as every process here (Stable Diffusion 3 feeds x_t itself), and the time
``model_time(t) = (model_steps - 1) t`` (diffusers' FlowMatch schedulers tell it 1000 t).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusion.processes.base import Process, as_time


class FlowProcess(Process):
    """x_t = (1 - t) x_0 + t eps; see the module docstring."""

    name = "flow"

    def __init__(self, *, t_min: float = 0.0, **options: Any):
        options.setdefault("prediction_type", "flow_prediction")
        super().__init__(t_min=t_min, **options)

    def alpha(self, t):
        return 1.0 - as_time(t)

    def sigma(self, t):
        return as_time(t).clone()

    def d_log_alpha(self, t):
        return -1.0 / (1.0 - as_time(t))

    def d_sigma2(self, t):
        return 2.0 * as_time(t)

    def d_alpha(self, t):
        return -torch.ones_like(as_time(t))

    def d_sigma(self, t):
        return torch.ones_like(as_time(t))

    def time_of(self, level):
        level = as_time(level)
        return level / (1.0 + level)  # t / (1 - t) = level


class CorruptProcess(FlowProcess):
    """The Hugging Face course's first model ("corrupt and denoise", before DDPM): x_t =
    (1 - a) x_0 + a u with a in [0, 1] and **uniform** noise u, the network predicting x_0
    (``prediction_type="sample"``) under a plain MSE. The course draws u from U(0, 1) on data
    in [0, 1]; on data in [-1, 1] that is u ~ U(-1, 1), the same model up to the affine map
    between the two ranges. It is flow matching's path with uniform noise, so the course's
    sampler (x <- x + (x0_hat - x) / (n - i), i = 0..n-1, from uniform noise) is exactly Euler
    on dx/dt = (x - x0_hat) / t over n equal steps from t = 1 to 0 (``sampler=corrupt``).

    ``noise_from_normal`` carries the standard normal draws every sampler and objective make
    to the process's noise, u = 2 Phi(z) - 1 = erf(z / sqrt 2), elementwise: the draw's seed
    still decides everything, and a run reproduces."""

    name = "corrupt"
    gaussian = False

    def __init__(self, *, t_min: float = 0.0, **options: Any):
        options.setdefault("prediction_type", "sample")
        super().__init__(t_min=t_min, **options)

    def noise_from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """U(-1, 1) noise from standard normal ``z`` (its CDF, mapped to [-1, 1])."""
        return torch.erf(z * 0.5**0.5)
