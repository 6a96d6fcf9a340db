"""Denoising score matching in continuous time (Song et al. 2021, eq. 7): the objective of the
score-SDE processes (``scheduler=vp|vp_cosine|subvp|ve``), and of a DDPM table read in
continuous time.

t is drawn from [t_min, 1], x_t = alpha(t) x_0 + sigma(t) eps, and the network sees
c_in(t) x_t at time ``model_time(t)`` (``Process``). It outputs epsilon, x_0 or v in the
normalised terms of ``Process.normalised``; its score is -eps / sigma(t). The loss weights
lambda(t) of the paper are on the score error |s - grad log p|^2 = |d eps|^2 / sigma^2:

- ``sigma2``: lambda = sigma(t)^2 (Song's default; NCSN's lambda(sigma) = sigma^2), i.e. the
  plain epsilon MSE, carried to x_0 and v outputs exactly (``objectives.error_ratio``);
- ``likelihood``: lambda = g(t)^2, the weighting under which the loss bounds the negative
  log-likelihood (Song et al. 2021b, "Maximum Likelihood Training of Score-Based Diffusion
  Models"), i.e. g^2 / sigma^2 on the epsilon error. Without importance sampling of t its
  variance is high for VP near t_min, where g^2 / sigma^2 ~ 1 / t;
- ``none``: the plain MSE of the network's own output;
- ``edm``: Karras et al. 2022's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
  on the x_0 error, sigma = sigma(t) / alpha(t): 1 + sigma^2 / sigma_data^2 on the epsilon
  error, exactly 1 on a v output (``objective=edm``: v-prediction is EDM's preconditioning, so
  the loss is the plain MSE of F, EDM's own loss value).

``t_sampling: logit_normal`` draws t = sigmoid(logit_mean + logit_std z) and ``mode`` SD3's
mode sampling (``mode_scale``; Esser et al. 2024, section 3.1); ``shift`` moves every drawn t
to shift t / (1 + (shift - 1) t) (their section 5.3.2). ``objective=flow`` is flow matching:
the plain MSE of the velocity over ``scheduler=flow``.

``t_sampling: lognormal`` draws EDM's noise levels, ln sigma ~ N(p_mean, p_std^2), and trains
at their times (``Process.time_of``; past [t_min, 1] only where the process's closed form
extends there, as EDM's does, and clamped to it otherwise).

``levels: L`` trains on L times evenly spaced from t_min to 1 only (for a VE process, NCSN's L
geometric noise levels of Song & Ermon 2019, whose lambda(sigma) = sigma^2 is ``sigma2``); the
``ald`` sampler then anneals through the same levels with ``sampler.steps=L``.

A DDPM scheduler given instead of a process is read as ``DiscreteProcess.of(scheduler)``: the
same table, with t continuous between its steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.checks import check_choice, check_int, check_number
from diffusion.errors import ConfigError
from diffusion.processes.base import Process
from diffusion.schedulers.continuous import as_process
from diffusion.schedulers.velocity import shift_times
from diffusion.training.objectives import LOSSES, T_SAMPLINGS, Objective, error_ratio

DSM_WEIGHTINGS = ("sigma2", "likelihood", "none", "edm")
DSM_T_SAMPLINGS = (*T_SAMPLINGS, "lognormal", "logit_normal", "mode")


class ScoreMatching(Objective):
    """Continuous-time denoising score matching over ``scheduler`` (a ``Process``, or a DDPM
    scheduler read in continuous time); see the module docstring."""

    def __init__(self, scheduler, weighting: str = "sigma2", t_sampling: str = "uniform",
                 offset_noise: float = 0.0, loss: str = "mse", huber_delta: float = 0.1,
                 levels: int | None = None, p_mean: float = -1.2, p_std: float = 1.2,
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                 shift: float = 1.0):
        for key, value, choices in (("weighting", weighting, DSM_WEIGHTINGS),
                                    ("t_sampling", t_sampling, DSM_T_SAMPLINGS),
                                    ("loss", loss, LOSSES)):
            check_choice(f"objective.{key}", value, choices)
        check_number("objective.huber_delta", huber_delta, above=0)
        check_number("objective.offset_noise", offset_noise, minimum=0)
        if levels is not None:
            check_int("objective.levels", levels, minimum=2, note=" (or null: continuous t)")
            if t_sampling == "lognormal":
                raise ValueError("objective.levels draws from L fixed levels and "
                                 "t_sampling=lognormal from EDM's log-normal: set levels=null "
                                 "or t_sampling=uniform.")
        check_number("objective.p_mean", p_mean)
        check_number("objective.p_std", p_std, above=0)
        check_number("objective.logit_mean", logit_mean)
        check_number("objective.logit_std", logit_std, above=0)
        check_number("objective.mode_scale", mode_scale, -1.0, 1.75,
                     note=" (SD3's mode sampling is a map of [0, 1] onto itself there)")
        check_number("objective.shift", shift, above=0)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.mode_scale, self.shift = float(mode_scale), float(shift)
        self.process: Process = as_process(scheduler)
        self.scheduler = self.process
        self.prediction_type = self.process.prediction_type
        self.weighting, self.t_sampling, self.loss_kind = weighting, t_sampling, loss
        self.offset_noise, self.huber_delta = float(offset_noise), float(huber_delta)
        self.levels = levels

    def sample_timesteps(self, n: int, device: torch.device, generator: torch.Generator):
        """n times in [t_min, 1) (float64), uniform or stratified (one per slice, shuffled), or
        those of EDM's log-normal noise levels (``lognormal``);
        with ``levels`` = L, one of L times evenly spaced from t_min to 1 (NCSN's L noise
        levels: geometric sigmas for a VE process)."""
        if self.t_sampling == "lognormal":  # EDM: ln sigma ~ N(p_mean, p_std^2)
            z = torch.randn(n, device=device, generator=generator, dtype=torch.float64)
            t = self.process.time_of((self.p_mean + self.p_std * z).exp())
            return t if self.process.extends_past_ends else t.clamp(self.process.t_min, 1.0)
        t_min = self.process.t_min
        if self.t_sampling == "logit_normal":  # SD3: t = sigmoid(m + s z)
            z = torch.randn(n, device=device, generator=generator, dtype=torch.float64)
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        else:
            u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
        if self.t_sampling == "stratified":
            u = (torch.randperm(n, device=device, generator=generator) + u) / n
        elif self.t_sampling == "mode":  # SD3's eq. 20: density heavier in the middle
            u = 1 - u - self.mode_scale * (torch.cos(torch.pi / 2 * u) ** 2 - 1 + u)
        if self.levels is not None:
            u = (u * self.levels).floor().clamp(max=self.levels - 1) / (self.levels - 1)
        u = shift_times(u, self.shift)
        return t_min + (1.0 - t_min) * u

    def sample_noise(self, shape: tuple[int, ...], device: torch.device,
                     generator: torch.Generator) -> Tensor:
        """The process's noise (``Process.noise_from_normal`` of standard normal draws)."""
        return self.process.noise_from_normal(super().sample_noise(shape, device, generator))

    def noised(self, x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_in(t) x_t, model_time(t), target): what the network sees and must output."""
        process = self.process
        x_in = process.add_noise(x0, noise, t) * process._per_sample(process.c_in(t), x0)
        return x_in, process.model_time(t), process.training_target(x0, noise, t)

    def weights(self, timesteps: Tensor) -> Tensor:
        """Per-sample loss weights on the network's own output (float32)."""
        process = self.process
        a, s = process.normalised(timesteps)
        on_eps = torch.ones_like(a)
        if self.weighting == "likelihood":
            on_eps = process.sde(timesteps)[1] / process.sigma(timesteps) ** 2
        elif self.weighting == "edm":  # 1 + sigma^2 / sigma_data^2 = 1 + 1 / snr
            on_eps = 1.0 + (s / a) ** 2
        if self.prediction_type == "flow_prediction":  # |d eps| = alpha / det |d u|
            alpha, sigma = process.alpha(timesteps), process.sigma(timesteps)
            det = alpha * process.d_sigma(timesteps) - sigma * process.d_alpha(timesteps)
            return (on_eps * (alpha / det) ** 2).float()
        return (on_eps * error_ratio((a / s) ** 2, self.prediction_type)).float()

    def weight_table(self) -> Tensor:
        raise NotImplementedError("continuous time has no table: use weights(t).")

    def __repr__(self) -> str:
        return (f"ScoreMatching(process={self.process!r}, weighting={self.weighting!r}, "
                f"t_sampling={self.t_sampling!r}, offset_noise={self.offset_noise}, "
                f"loss={self.loss_kind!r})")


class CorruptAndDenoise(ScoreMatching):
    """``objective=corrupt``: the course's baseline, the plain x_0 MSE at a ~ U(0, 1) over the
    corrupt-and-denoise process (``processes.CorruptProcess``) and no other."""

    def __init__(self, scheduler, **options):
        if getattr(scheduler, "name", None) != "corrupt":
            raise ConfigError(f"objective=corrupt trains the corrupt-and-denoise process, and "
                              f"this run's is {type(scheduler).__name__}: add scheduler=corrupt "
                              f"sampler=corrupt (an experiment= that picks its own scheduler "
                              f"overrides the objective's choice).")
        super().__init__(scheduler, **options)
