"""The samplers of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
Generative Models") and k-diffusion, over any continuous-time ``Process``.

They step in the variance-exploding view x^ = x_t / alpha(t) = x_0 + sigma^ eps, sigma^ =
``Process.noise_level(t)``, with the denoiser D(x^, sigma^) = the network's x_0 at the time t
whose noise level is sigma^ (``Process.time_of``), over n noise levels on the rho ramp

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

sigma_n = 0, between the process's own ends (sigma^ at t_min and at 1; ``schedule="time"``:
the levels of n evenly spaced times instead, the same for ``EDMProcess``). Algorithms
(``algorithm=``), each step for step k-diffusion's function of the same name:

* ``heun``: EDM's Algorithm 2, Heun's method on dx/dsigma = (x - D) / sigma, its last step
  (to sigma = 0) an Euler step: 2 n - 1 network evaluations. With ``s_churn`` > 0 each step
  first lifts sigma_i to sigma_i (1 + gamma), gamma = min(s_churn / n, sqrt(2) - 1) where
  s_tmin <= sigma_i <= s_tmax, by adding noise of std s_noise sqrt(sigma_hat^2 - sigma_i^2)
  (``sample_heun``; ``sampler=edm``);
* ``euler``: the same with Euler steps, n evaluations (``sample_euler``);
* ``euler_ancestral``: an Euler step to sigma_down and fresh noise sigma_up
  (``sample_euler_ancestral``, ``eta``);
* ``dpmpp_2m``: DPM-Solver++(2M) in log sigma (``sample_dpmpp_2m``).

The churn of step i is added at the end of step i - 1 (the state the loop holds is then x at
sigma_hat_i); the first step's is folded into the starting noise, N(0, sigma_hat_0^2 I), which
has the same distribution. Churn is not applied where sigma_hat would pass the process's top
level (sigma^ at t = 1), where no network was trained.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_choice, check_int, check_number
from diffusion.processes.base import Process
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.continuous import ContinuousSampler, checked_process, register
from diffusion.schedulers.noise import Generators, randn_tensor

Tensor = torch.Tensor
ALGORITHMS = ("heun", "euler", "euler_ancestral", "dpmpp_2m")
SCHEDULES = ("karras", "time")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's n noise levels from sigma_max down to sigma_min on the rho ramp (float64)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class KarrasScheduler(ContinuousSampler, sampler_name="edm"):
    """EDM / k-diffusion sampling of ``process`` in sigma space; see the module docstring.
    ``sampler=edm`` is Heun (EDM's deterministic sampler with the defaults, its stochastic one
    with ``s_churn``); ``edm_euler``, ``edm_euler_a`` and ``edm_dpmpp_2m`` the others."""

    def __init__(self, process: Process | None = None, *, algorithm: str = "heun",
                 schedule: str = "karras", rho: float = 7.0, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 eta: float = 1.0):
        self.process = checked_process(process)
        self.algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.rho = check_number("rho", rho, above=0)
        self.s_churn = check_number("s_churn", s_churn, 0)
        self.s_tmin = check_number("s_tmin", s_tmin, 0)
        self.s_tmax = float(s_tmax) if s_tmax in (math.inf, "inf") else check_number(
            "s_tmax", s_tmax, 0)
        self.s_noise = check_number("s_noise", s_noise, 0)
        self.eta = check_number("eta", eta, 0, 1)
        if self.s_churn and self.algorithm not in ("heun", "euler"):
            raise ValueError("s_churn is EDM's churn for algorithm=heun or euler; "
                             f"{self.algorithm} takes none: set s_churn=0.")
        self.sigmas = torch.empty(0, dtype=torch.float64)
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._calls: list[tuple[str, int, float]] = []  # (first | second, step, sigma there)
        self._index = 0
        self._pending: tuple[Tensor, Tensor, float] | None = None
        self._old_denoised: Tensor | None = None

    @property
    def config(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "schedule": self.schedule, "rho": self.rho,
                "s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax,
                "s_noise": self.s_noise, "eta": self.eta}

    @property
    def stochastic(self) -> bool:
        return bool(self.s_churn and self.s_noise) or (
            self.algorithm == "euler_ancestral" and self.eta > 0)

    @property
    def init_noise_sigma(self) -> float:
        """sigma_hat_0: the first level, lifted by its churn (see the module docstring)."""
        return float(self._hats[0]) if len(self.sigmas) else self._process().prior_std

    # ------------------------------------------------------------------ timesteps
    def set_timesteps(self, num_inference_steps: int, device: Any = None,
                      sigmas: Tensor | None = None) -> None:
        """n noise levels (or the given decreasing ``sigmas``, with the final 0 appended)
        and the network's time at each evaluation (``timesteps``)."""
        process = self._process()
        if sigmas is None:
            n = check_int("num_inference_steps", num_inference_steps, 1)
            top, bottom = (float(process.noise_level(t)) for t in (1.0, process.t_min))
            if self.schedule == "karras":
                levels = karras_sigmas(n, bottom, top, self.rho)
            else:
                levels = process.noise_level(torch.linspace(1.0, process.t_min, n,
                                                            dtype=torch.float64))
        else:
            levels = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
            n = len(levels)
        self.sigmas = torch.cat([levels, levels.new_zeros(1)])
        gammas = [min(self.s_churn / n, math.sqrt(2) - 1)
                  if self.s_churn and self.s_tmin <= s <= self.s_tmax else 0.0
                  for s in self.sigmas[:-1].tolist()]
        top = float(process.noise_level(1.0)) * (1 + 1e-9)
        self._hats = [s * (1 + g) if s * (1 + g) <= top else s
                      for s, g in zip(self.sigmas[:-1].tolist(), gammas, strict=True)]
        self._calls = []
        for i, hat in enumerate(self._hats):
            self._calls.append(("first", i, hat))
            if self.algorithm == "heun" and self.sigmas[i + 1] > 0:
                self._calls.append(("second", i, float(self.sigmas[i + 1])))
        levels_called = torch.tensor([s for *_, s in self._calls], dtype=torch.float64)
        self._times = process.time_of(levels_called)
        self.timesteps = process.model_time(self._times).float().to(device)
        self.num_inference_steps = n
        self._index = 0
        self._pending = None
        self._old_denoised = None

    @property
    def state_positions(self) -> list[int]:
        """Loop positions where x is a state of the chain: before each step's first call."""
        return [j for j, (kind, *_) in enumerate(self._calls) if kind == "first"] \
            + [len(self._calls)]

    def known_state(self, x0: Tensor, noise: Tensor, k: int) -> Tensor:
        """The k-th state of the chain for the known image ``x0``: x0 + sigma_hat_k noise in
        the sigma view these samplers step in (the last state: ``x0``)."""
        if k >= len(self._hats):
            return x0
        return x0 + self._hats[k] * noise

    def _call(self) -> tuple[str, int, float, Tensor]:
        if self._index >= len(self._calls):
            raise ValueError("all steps of this run are done; call set_timesteps(n) to sample "
                             "again.")
        kind, i, level = self._calls[self._index]
        return kind, i, level, self._times[self._index]

    def _alpha(self, t: Tensor) -> float:
        return float(self._process().alpha(t))

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The network's input c_in(t) x_t = c_in(t) alpha(t) x^ at this call's time."""
        *_, t = self._call()
        process = self._process()
        return sample * float(process.c_in(t) * process.alpha(t))

    def denoised(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """D(x^, sigma^): the network's x_0 at this call, from its output and x^ = ``sample``."""
        *_, t = self._call()
        return self._process().pred_x0_eps(model_output, sample * self._alpha(t), t)[0]

    # ------------------------------------------------------------------ the step
    def step(self, model_output: Tensor, timestep, sample: Tensor, *,
             generator: Generators = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One network evaluation's update (a Heun step's first or second half, or a whole
        step of the other algorithms), then the next step's churn."""
        kind, i, level, _ = self._call()
        denoised = self.denoised(model_output, sample)
        d = (sample - denoised) / level
        sigma_next = float(self.sigmas[i + 1])
        finished = True
        if kind == "second":  # Heun's correction from the step's start
            start, d_first, hat = self._pending
            prev = start + 0.5 * (d_first + d) * (sigma_next - hat)
            self._pending = None
        elif self.algorithm == "heun" and sigma_next > 0:
            prev = sample + d * (sigma_next - level)  # where the second evaluation is made
            self._pending = (sample, d, level)
            finished = False
        elif self.algorithm in ("heun", "euler"):
            prev = sample + d * (sigma_next - level)
        elif self.algorithm == "euler_ancestral":
            down, up = ancestral_levels(level, sigma_next, self.eta)
            prev = sample + d * (down - level)
            if sigma_next > 0 and up > 0:
                prev = prev + randn_tensor(sample.shape, generator, sample.device,
                                           sample.dtype) * (self.s_noise * up)
        else:  # dpmpp_2m, k-diffusion's in t = -log sigma
            prev = self._dpmpp_2m(sample, denoised, i, level, sigma_next)
        if finished and i + 1 < len(self._hats):
            prev = self._churn(prev, i + 1, generator)
        self._index += 1
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=denoised)
        return out if return_dict else tuple(out)

    def _churn(self, x: Tensor, i: int, generator: Generators) -> Tensor:
        """x at sigma_i lifted to sigma_hat_i (nothing where step i has no churn)."""
        sigma, hat = float(self.sigmas[i]), self._hats[i]
        if hat == sigma:
            return x
        noise = randn_tensor(x.shape, generator, x.device, x.dtype)
        return x + noise * (self.s_noise * math.sqrt(hat**2 - sigma**2))

    def _dpmpp_2m(self, x: Tensor, denoised: Tensor, i: int, sigma: float,
                  sigma_next: float) -> Tensor:
        old, self._old_denoised = self._old_denoised, denoised
        if sigma_next == 0:
            return denoised
        h = math.log(sigma) - math.log(sigma_next)
        ratio = sigma_next / sigma
        if old is None:
            return ratio * x - math.expm1(-h) * denoised
        h_last = math.log(float(self.sigmas[i - 1])) - math.log(sigma)
        r = h_last / h
        return ratio * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * denoised - old / (2 * r))


def ancestral_levels(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next (k-diffusion's
    ``get_ancestral_step``): sigma_down^2 + sigma_up^2 = sigma_next^2."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


register("edm_euler", KarrasScheduler, algorithm="euler")
register("edm_euler_a", KarrasScheduler, algorithm="euler_ancestral")
register("edm_dpmpp_2m", KarrasScheduler, algorithm="dpmpp_2m")
