"""A noise process in continuous time: x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I).

Every process of the score-SDE family is one of these (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations"): the forward SDE

    dx = f(t) x dt + g(t) dW,   f(t) = d log alpha / dt,   g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2

has exactly these Gaussian marginals, so a process is defined by alpha(t) and sigma(t) on
t in [t_min, t_max] (t_max = 1) and their derivatives, and everything else follows here: the
SDE's coefficients, the prior at t_max, the probability-flow ODE, and the conversions between
what a network predicts (epsilon, x_0, v) and the score, grad log p_t(x) = -eps / sigma(t).

What the network sees, for every process: the input x_t * c_in(t) with
c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2), so that it always sees the variance-preserving
mixture a (x_0 / sigma_data) + s eps with a^2 + s^2 = 1 (for a VP process with sigma_data = 1,
c_in = 1 and x_t itself; for VE it is the sigma-space scaling of Karras et al. 2022), and the
time ``model_time(t) = (model_steps - 1) t``: DDPM's integer timesteps for its own discrete
process, and the labels of Song et al.'s VP models (999 t) for the continuous ones. Its
predictions are read in those normalised terms (``normalised``): eps, x_0 / sigma_data or
v = a eps - s x_0 / sigma_data. ``sigma_data`` (1 unless a process sets it: EDM's 0.5) is the
data's standard deviation the normalisation assumes; with it, v-prediction is exactly EDM's
preconditioning (Karras et al. 2022, table 1: c_in, c_skip, c_out, and F = -v).

A new process defines ``alpha``, ``sigma``, ``d_log_alpha`` and ``d_sigma2`` (all of float64
tensors of t) and ``config``; it may override ``model_time`` (with ``time_of_model_time``) and
``time_of`` (the time of a noise level, by bisection otherwise) with closed forms. EDM
(``edm.EDMProcess``: alpha = 1, sigma on the rho = 7 ramp) and flow matching (alpha = 1 - t,
sigma = t) fit the same four.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_choice, check_int, check_number

Tensor = torch.Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
"""What a network over a process outputs: epsilon, x_0 / sigma_data, the normalised v, or the
velocity of the interpolant, u = alpha'(t) x_0 + sigma'(t) eps (``flow_prediction``: eps - x_0
for flow matching's straight path, diffusers' convention)."""


def as_time(t: float | Tensor) -> Tensor:
    """``t`` as a float64 tensor (a float becomes a 0-d one)."""
    return t.double() if torch.is_tensor(t) else torch.tensor(float(t), dtype=torch.float64)


class Process:
    """Base of the continuous-time noise processes; see the module docstring.

    ``t_min``: where sampling stops and training times start (the SDE's marginals are
    degenerate at t = 0 for VE, where sigma(0) = 0 would make the score unbounded);
    ``model_steps``: the network's time scale (it is told (model_steps - 1) t).
    """

    name: str = "process"
    t_max: float = 1.0
    #: whether alpha, sigma, ``time_of`` and ``model_time`` hold past [0, 1] (a closed form
    #: that extends, as EDM's ramp does), so training may draw times out there
    extends_past_ends: bool = False
    #: whether the noise is Gaussian (every process here but the course's corrupt-and-denoise
    #: baseline, whose uniform noise only the velocity samplers start from)
    gaussian: bool = True

    def __init__(self, *, t_min: float = 1e-5, model_steps: int = 1000,
                 prediction_type: str = "epsilon", sigma_data: float = 1.0):
        self.t_min = check_number("t_min", t_min, 0, None, below=1.0)
        self.model_steps = check_int("model_steps", model_steps, 2)
        self.prediction_type = check_choice("prediction_type", prediction_type,
                                            PREDICTION_TYPES)
        self.sigma_data = check_number("sigma_data", sigma_data, above=0)

    # ------------------------------------------------------------ to define
    def alpha(self, t: float | Tensor) -> Tensor:
        """The signal scale alpha(t), float64."""
        raise NotImplementedError

    def sigma(self, t: float | Tensor) -> Tensor:
        """The noise scale sigma(t), float64."""
        raise NotImplementedError

    def d_log_alpha(self, t: float | Tensor) -> Tensor:
        """d log alpha / dt: the SDE's drift coefficient f(t)."""
        raise NotImplementedError

    def d_sigma2(self, t: float | Tensor) -> Tensor:
        """d sigma^2 / dt."""
        raise NotImplementedError

    def d_alpha(self, t: float | Tensor) -> Tensor:
        """alpha'(t) = alpha d log alpha / dt (a process may give a closed form)."""
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: float | Tensor) -> Tensor:
        """sigma'(t) = (d sigma^2 / dt) / (2 sigma) (a process may give a closed form)."""
        return self.d_sigma2(t) / (2.0 * self.sigma(t))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (``type(p)(**p.config)`` rebuilds it); ``sigma_data``
        only where it is not 1."""
        config = {"t_min": self.t_min, "model_steps": self.model_steps,
                  "prediction_type": self.prediction_type}
        return config if self.sigma_data == 1.0 else {**config, "sigma_data": self.sigma_data}

    @property
    def num_train_timesteps(self) -> int:
        """The network's time scale (``model_steps``), read where a DDPM scheduler's step count
        is: the most steps a sampler takes over this process."""
        return self.model_steps

    # ------------------------------------------------------- what follows
    def sde(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(f(t), g(t)^2) of the forward SDE dx = f x dt + g dW whose marginals these are."""
        f = self.d_log_alpha(t)
        return f, self.d_sigma2(t) - 2.0 * f * self.sigma(t) ** 2

    def c_in(self, t: float | Tensor) -> Tensor:
        """The network's input scale 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)."""
        return (self.alpha(t) ** 2 * self.sigma_data**2 + self.sigma(t) ** 2).rsqrt()

    def normalised(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(a, s) = c_in (alpha sigma_data, sigma): the network's x_0 / sigma_data and eps
        scales, a^2 + s^2 = 1."""
        c = self.c_in(t)
        return self.alpha(t) * self.sigma_data * c, self.sigma(t) * c

    def noise_level(self, t: float | Tensor) -> Tensor:
        """sigma(t) / alpha(t): the noise level of x_t / alpha(t) = x_0 + (sigma / alpha) eps,
        the variance-exploding view in which the EDM and k-diffusion samplers step."""
        return self.sigma(t) / self.alpha(t)

    def time_of(self, level: float | Tensor) -> Tensor:
        """The time t in [0, 1] whose ``noise_level`` is ``level`` (float64; levels outside
        the process's range give 0 or 1): bisection on the increasing noise level, 60 halvings
        (to float64's resolution of [0, 1]); processes with a closed form override it."""
        level = as_time(level)
        lo, hi = torch.zeros_like(level), torch.ones_like(level)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.noise_level(mid) > level
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        return 0.5 * (lo + hi)

    def time_of_model_time(self, model_time: float | Tensor) -> Tensor:
        """The inverse of ``model_time``: t from what the network is told."""
        return as_time(model_time) / (self.model_steps - 1)

    def log_snr(self, t: float | Tensor) -> Tensor:
        """lambda(t) = log(alpha / sigma), decreasing in t."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def model_time(self, t: float | Tensor) -> Tensor:
        """The time the network is told: (model_steps - 1) t."""
        return (self.model_steps - 1) * as_time(t)

    @property
    def prior_std(self) -> float:
        """The standard deviation of the prior N(0, prior_std^2 I) at t_max that sampling
        starts from: sqrt(alpha^2 sigma_data^2 + sigma^2) at t_max (1 for VP; ~sigma_max for
        VE)."""
        return float(1.0 / self.c_in(self.t_max))

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) per sample (z: (B, ...)), summed over the dimensions."""
        d = z[0].numel()
        std = self.prior_std
        return (-0.5 * d * math.log(2 * math.pi * std**2)
                - z.flatten(1).double().pow(2).sum(1) / (2 * std**2))

    def noise_from_normal(self, z: Tensor) -> Tensor:
        """The process's noise from standard normal draws ``z``: ``z`` itself (Gaussian)."""
        return z

    def add_noise(self, x0: Tensor, noise: Tensor, t: float | Tensor) -> Tensor:
        """x_t = alpha(t) x_0 + sigma(t) noise (t: one time, or one per sample)."""
        alpha, sigma = self._per_sample(self.alpha(t), x0), self._per_sample(self.sigma(t), x0)
        return alpha * x0 + sigma * noise

    # ------------------------------------ what a network's output means
    def pred_x0_eps(self, model_output: Tensor, x: Tensor, t: float | Tensor
                    ) -> tuple[Tensor, Tensor]:
        """(x_0, eps) that ``model_output`` (of ``prediction_type``, made from the input
        c_in(t) x) implies at x_t = ``x``."""
        a, s = (self._per_sample(v, x) for v in self.normalised(t))
        if self.prediction_type == "flow_prediction":  # u = alpha' x_0 + sigma' eps: solve
            alpha, sigma, d_alpha, d_sigma = (self._per_sample(v(t), x) for v in (
                self.alpha, self.sigma, self.d_alpha, self.d_sigma))
            det = alpha * d_sigma - sigma * d_alpha
            return (x * d_sigma - sigma * model_output) / det, \
                (alpha * model_output - d_alpha * x) / det
        xn = self._per_sample(self.c_in(t), x) * x  # the network saw a x_0 / sigma_data + s eps
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (xn - s * eps) / a
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (xn - a * x0) / s
        else:  # v = a eps - s x_0 / sigma_data
            x0 = a * xn - s * model_output
            eps = s * xn + a * model_output
        return (x0 if self.sigma_data == 1.0 else x0 * self.sigma_data), eps

    def score(self, model_output: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """grad_x log p_t(x) = -eps / sigma(t) from the network's ``model_output``."""
        _, eps = self.pred_x0_eps(model_output, x, t)
        return -eps / self._per_sample(self.sigma(t), x)

    def training_target(self, x0: Tensor, noise: Tensor, t: float | Tensor) -> Tensor:
        """What the network learns to output for x_t = add_noise(x0, noise, t)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "flow_prediction":
            return self.velocity(x0, noise, t)
        x0 = x0 if self.sigma_data == 1.0 else x0 / self.sigma_data
        if self.prediction_type == "sample":
            return x0
        a, s = (self._per_sample(v, x0) for v in self.normalised(t))
        return a * noise - s * x0

    def velocity(self, x0: Tensor, noise: Tensor, t: float | Tensor) -> Tensor:
        """d x_t / dt along the path of one (x_0, eps): alpha'(t) x_0 + sigma'(t) eps. With the
        network's estimates of x_0 and eps it is the probability-flow ODE's drift."""
        return self._per_sample(self.d_alpha(t), x0) * x0 \
            + self._per_sample(self.d_sigma(t), x0) * noise

    @staticmethod
    def _per_sample(value: Tensor, like: Tensor) -> Tensor:
        """A 0-d or (B,) float64 ``value`` shaped to multiply ``like`` (B, ...), in its dtype."""
        value = value.to(device=like.device, dtype=like.dtype)
        return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"
