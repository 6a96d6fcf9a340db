"""Predictor-corrector sampling of a continuous-time process's reverse SDE (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations", Algorithms 2-3
and appendix G), in the scheduler API of this package.

The reverse of dx = f x dt + g dW is dx = [f x - g^2 score] dt + g dW-bar, run from t = 1 down
to t_min over n times t_0 = 1 > ... > t_{n-1} = t_min (evenly spaced), each step landing on the
next time (the last one on t = 0; a process with t_min = 0, a DDPM table's, takes n + 1 evenly
spaced times down to 0 instead, so n steps either way). Predictors (one model evaluation each):

* ``euler_maruyama``: x + [f x - g^2 score] dt + g sqrt(|dt|) z (Song's ``EulerMaruyamaPredictor``,
  diffusers' ``ScoreSdeVpScheduler.step_pred``); with ``probability_flow=True`` the ODE
  dx = [f x - g^2 score / 2] dt, deterministic (an Euler step).
* ``ancestral``: a draw from the forward process's posterior q(x_next | x_t, x_0) at the
  network's x_0 (DDPM's step, eq. 7 of Ho et al., for any process; for VE it is Song's
  ``AncestralSamplingPredictor``, for VP his is this step to first order in beta).
* ``heun`` (with ``probability_flow=True`` only): Heun's second-order step of the ODE, two
  model evaluations (the second at the next time), the last step to t = 0 an Euler step.
* ``reverse_diffusion``: the forward process's own step from the next time up to this one,
  x_t = r x_next + G z with r = alpha(t) / alpha(t_next) and G^2 = sigma(t)^2 - r^2
  sigma(t_next)^2, reversed: x - (r - 1) x + G^2 score + G z (Song's
  ``ReverseDiffusionPredictor``; for VE it is diffusers' ``ScoreSdeVeScheduler.step_pred``).

The ``langevin`` corrector runs ``n_corrector`` Langevin steps at each time before its
predictor (Song's ``LangevinCorrector``, diffusers' ``step_correct``): x + e score + sqrt(2 e) z
with e = 2 r^2 (snr ||z|| / ||score||)^2, norms averaged over the batch. Each corrector step is a
model evaluation: ``timesteps`` lists every evaluation (n (1 + n_corrector) of them, the NFE),
as the network is told the time (``Process.model_time``), so the pipeline's loop runs it
unchanged. ``denoise="mean"``: the last predictor step lands on t = 0 and its noise-free mean is
returned (Song's ``denoise=True``); ``denoise="tweedie"``: the steps end on t_min and one more
evaluation there returns E[x_0 | x] (Tweedie's formula, the network's x_0).
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

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "heun", "none")
DENOISE = ("mean", "tweedie")
CORRECTORS = ("langevin", "none")


class ScoreSDEScheduler(ContinuousSampler, sampler_name="pc"):
    """Predictor-corrector sampling of ``process``'s reverse SDE; see the module docstring.
    ``sampler=pc`` is its defaults (reverse diffusion and one Langevin step at snr 0.16, Song et
    al.'s VE setting), ``sampler=em`` Euler-Maruyama alone, ``sampler=ode`` the probability-flow
    ODE with Heun's method."""

    def __init__(self, process: Process | None = None, *, predictor: str = "reverse_diffusion",
                 corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1,
                 probability_flow: bool = False, denoise: str = "mean"):
        self.process = checked_process(process)
        self.predictor = check_choice("predictor", predictor, PREDICTORS)
        self.corrector = check_choice("corrector", corrector, CORRECTORS)
        self.snr = check_number("snr", snr, above=0)
        self.n_corrector = check_int("n_corrector", n_corrector, 0)
        self.probability_flow = check_choice("probability_flow", probability_flow, (True, False))
        self.denoise = check_choice("denoise", denoise, DENOISE)
        if self.predictor == "none" and (self.corrector == "none" or not self.n_corrector):
            raise ValueError("predictor='none' needs the langevin corrector with n_corrector >= 1.")
        if self.predictor == "heun" and not self.probability_flow:
            raise ValueError("predictor='heun' integrates the probability-flow ODE: set "
                             "probability_flow=True, or use euler_maruyama for the SDE.")
        # each call: (corrector | predictor | heun2 | tweedie, index of the time, its time)
        self._calls: list[tuple[str, int, float]] = []
        self._pending: tuple[Tensor, Tensor, float] | None = None  # Heun's first half
        self._times: list[float] = []
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._index = 0

    @property
    def config(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "corrector": self.corrector, "snr": self.snr,
                "n_corrector": self.n_corrector, "probability_flow": self.probability_flow,
                "denoise": self.denoise}

    @property
    def stochastic(self) -> bool:
        return (self.predictor != "none" and not self.probability_flow) or self._corrects

    @property
    def _corrects(self) -> bool:
        return self.corrector != "none" and self.n_corrector > 0

    @property
    def init_noise_sigma(self) -> float:
        """The prior's standard deviation: sampling starts from N(0, prior_std^2 I)."""
        return self._process().prior_std

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """n times evenly spaced from 1 to t_min; ``timesteps`` holds what the network is told
        at each of the n (1 + n_corrector) evaluations, in order."""
        n = check_int("num_inference_steps", num_inference_steps, 2 if self.predictor != "none"
                      else 1)
        t_min = self._process().t_min
        times = [1.0 - i * (1.0 - t_min) / (n - 1) for i in range(n)] if n > 1 else [1.0]
        tweedie = self.denoise == "tweedie"
        # the times each step starts from, then where the last one lands: n steps, the last
        # to t = 0 (a process whose t_min is 0, a DDPM table's, spaces n + 1 times down to it)
        if t_min == 0 and not tweedie:
            self._times = [1.0 - i / n for i in range(n + 1)]
        else:
            self._times = times if tweedie else times + [0.0]
        self._calls = []
        for i, t in enumerate(self._times[:-1]):
            self._calls += [("corrector", i, t)] * (self.n_corrector if self._corrects else 0)
            if self.predictor != "none":
                self._calls.append(("predictor", i, t))
                t_next = self._times[i + 1]
                if self.predictor == "heun" and t_next > 0:
                    self._calls.append(("heun2", i, t_next))
        if tweedie:
            self._calls.append(("tweedie", len(self._times) - 1, t_min))
        model_times = self.process.model_time(torch.tensor([t for *_, t in self._calls],
                                                           dtype=torch.float64))
        self.timesteps = model_times.float().to(device)
        self.num_inference_steps = n
        self._index = 0
        self._pending = None

    @property
    def state_positions(self) -> list[int]:
        """Loop positions where x is a state of the chain: before each time's first call."""
        starts = [j for j, (kind, i, _) in enumerate(self._calls)
                  if kind != "heun2" and (j == 0 or self._calls[j - 1][1] != i)]
        return [*starts, len(self._calls)]

    def known_state(self, x0: Tensor, noise: Tensor, k: int) -> Tensor:
        """The k-th state of the chain (``state_positions[k]``) for the known image ``x0``:
        x0 noised to that state's time (the last state: ``x0``). Inpainting replaces the known
        pixels with it (Song et al. 2021, appendix I.2)."""
        if k >= len(self.state_positions) - 1:
            return x0
        return self._process().add_noise(x0, noise, self._times[k])

    def _time(self) -> tuple[str, float, float]:
        """(kind of the call about to be made, the time it evaluates at, the next time)."""
        if self._index >= len(self._calls):
            raise ValueError("all steps of this run are done; call set_timesteps(n) to sample "
                             "again.")
        kind, i, t = self._calls[self._index]
        t_next = self._times[i + 1] if i + 1 < len(self._times) else 0.0
        return kind, t, t_next

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The network's input c_in(t) x at the current call's time."""
        _, t, _ = self._time()
        return sample * float(self.process.c_in(t))

    def step(self, model_output: Tensor, timestep, sample: Tensor, *,
             generator: Generators = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One call: a corrector or a predictor step (see ``timesteps``); after the last
        predictor, ``prev_sample`` is its noise-free mean."""
        kind, t, t_next = self._time()
        score = self.process.score(model_output, sample, t)
        x0, _ = self.process.pred_x0_eps(model_output, sample, t)
        deterministic = kind in ("heun2", "tweedie") or (
            kind == "predictor" and self.probability_flow)
        noise = None if deterministic else randn_tensor(sample.shape, generator, sample.device,
                                                        sample.dtype)
        if kind == "tweedie":
            prev = x0
        elif kind == "corrector":
            r2 = float(self.process.alpha(t) / self.process.alpha(t_next)) ** 2  # 1 - beta
            prev, _ = langevin_step(sample, score, noise, self.snr, r2)
        elif kind == "heun2":  # the second half: the mean of the two slopes from the start
            start, slope, t_start = self._pending
            prev = start + 0.5 * (t - t_start) * (slope + ode_drift(self.process, sample, score, t))
            self._pending = None
        else:
            if self.predictor == "heun":
                slope = ode_drift(self.process, sample, score, t)
                prev = mean = sample + (t_next - t) * slope
                if t_next > 0:
                    self._pending = (sample, slope, t)
            else:
                step = PREDICTOR_STEPS[self.predictor]
                prev, mean = step(self.process, sample, score, noise, t, t_next,
                                  self.probability_flow)
            if self._index == len(self._calls) - 1:
                prev = mean
        self._index += 1
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return out if return_dict else tuple(out)


def ode_drift(process: Process, x: Tensor, score: Tensor, t: float) -> Tensor:
    """dx/dt of the probability-flow ODE: f x - g^2 score / 2."""
    f, g2 = (float(v) for v in process.sde(t))
    return f * x - 0.5 * g2 * score


def em_step(process: Process, x: Tensor, score: Tensor, noise: Tensor, t: float, t_next: float,
            probability_flow: bool = False) -> tuple[Tensor, Tensor]:
    """(x_next, its mean) of one Euler-Maruyama step of the reverse SDE (or, with
    ``probability_flow``, one Euler step of the probability-flow ODE) from t to t_next < t."""
    f, g2 = (float(v) for v in process.sde(t))
    dt = t_next - t
    drift = f * x - (0.5 if probability_flow else 1.0) * g2 * score
    mean = x + drift * dt
    if probability_flow:
        return mean, mean
    return mean + math.sqrt(g2 * -dt) * noise, mean


def reverse_diffusion_step(process: Process, x: Tensor, score: Tensor, noise: Tensor, t: float,
                           t_next: float, probability_flow: bool = False
                           ) -> tuple[Tensor, Tensor]:
    """(x_next, its mean) of Song et al.'s reverse-diffusion predictor: the forward step from
    t_next to t (x_t = r x_next + G z) reversed. ``probability_flow`` halves the score term and
    drops the noise, as Song's code does."""
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    alpha_n, sigma_n = float(process.alpha(t_next)), float(process.sigma(t_next))
    r = alpha / alpha_n
    g2 = max(sigma**2 - r**2 * sigma_n**2, 0.0)
    mean = x - (r - 1.0) * x + (0.5 if probability_flow else 1.0) * g2 * score
    if probability_flow:
        return mean, mean
    return mean + math.sqrt(g2) * noise, mean


def langevin_step(x: Tensor, score: Tensor, noise: Tensor, snr: float, r2: float = 1.0
                  ) -> tuple[Tensor, Tensor]:
    """(x, its mean) after one step of Song et al.'s Langevin corrector: step size
    e = 2 r2 (snr ||z|| / ||score||)^2 with the per-sample norms averaged over the batch."""
    grad_norm = score.flatten(1).norm(dim=-1).mean()
    noise_norm = noise.flatten(1).norm(dim=-1).mean()
    step = (snr * noise_norm / grad_norm) ** 2 * 2 * r2
    mean = x + step * score
    return mean + (2 * step).sqrt() * noise, mean


def ancestral_step(process: Process, x: Tensor, score: Tensor, noise: Tensor, t: float,
                   t_next: float, probability_flow: bool = False) -> tuple[Tensor, Tensor]:
    """(x_next, its mean): a draw from q(x_next | x_t = x, x_0) at the x_0 that ``score``
    implies (Tweedie). With r = alpha(t) / alpha(t_next) and G^2 = sigma(t)^2 - r^2
    sigma(t_next)^2 the posterior is N(alpha_n G^2 / sigma^2 x_0 + r sigma_n^2 / sigma^2 x,
    sigma_n^2 G^2 / sigma^2); ``probability_flow`` takes DDIM's deterministic step instead."""
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    alpha_n, sigma_n = float(process.alpha(t_next)), float(process.sigma(t_next))
    x0 = (x + sigma**2 * score) / alpha
    if probability_flow:  # DDIM: the same x_0 and eps, at the next level
        mean = alpha_n * x0 + sigma_n * (-sigma * score)
        return mean, mean
    r = alpha / alpha_n
    g2 = max(sigma**2 - r**2 * sigma_n**2, 0.0)
    mean = (alpha_n * g2 / sigma**2) * x0 + (r * sigma_n**2 / sigma**2) * x
    return mean + math.sqrt(sigma_n**2 * g2 / sigma**2) * noise, mean


PREDICTOR_STEPS = {"euler_maruyama": em_step, "reverse_diffusion": reverse_diffusion_step,
                   "ancestral": ancestral_step}


register("em", ScoreSDEScheduler, predictor="euler_maruyama", corrector="none")
register("ode", ScoreSDEScheduler, predictor="heun", corrector="none", probability_flow=True)
