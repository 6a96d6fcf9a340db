"""The training objective: how t and the noise are drawn, what the network learns to output,
and how much each sample's error counts.

The prediction type itself (epsilon, sample = x_0, v_prediction) lives on the training
scheduler, because sampling must read it too; the objective takes it from there, so a run
trains and samples consistently. Loss weights are defined, as in the papers, on one error
and carried to the others exactly. With SNR(t) = a_t / (1 - a_t) (a_t = alphas_cumprod) and
x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, the squared errors of the three outputs are tied:

    |d eps|^2 = SNR |d x_0|^2 = SNR / (SNR + 1) |d v|^2

so a weight w_eps(t) on the epsilon error is w_eps * SNR on the x_0 error and
w_eps * SNR / (SNR + 1) on the v error.

- ``none``: plain MSE of the model's own output (the DDPM "simple" loss for epsilon).
- ``min_snr`` (Hang et al. 2023, Min-SNR-gamma): min(SNR, gamma) on the x_0 error, i.e.
  min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma)
  for x_0 (diffusers' training scripts use the same weights).
- ``p2`` (Choi et al. 2022): 1 / (k + SNR)^gamma on the epsilon error.

Timesteps: ``uniform`` draws each t independently; ``stratified`` draws one t per equal
slice of [0, T) and shuffles them (a low-discrepancy batch: the same expectation, less
variance per step). Offset noise adds ``offset_noise`` times a per-image, per-channel
constant to the noise, so the model also learns to change an image's mean brightness.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.checks import check_choice, check_number
from diffusion.errors import ConfigError

WEIGHTINGS = ("none", "min_snr", "p2")
T_SAMPLINGS = ("uniform", "stratified")
LOSSES = ("mse", "l1", "huber")


class Objective:
    """What a training step computes, given the training scheduler (``add_noise``,
    ``training_target``, ``alphas_cumprod``, ``prediction_type``)."""

    def __init__(self, scheduler, weighting: str = "none", snr_gamma: float = 5.0,
                 p2_gamma: float = 1.0, p2_k: float = 1.0, t_sampling: str = "uniform",
                 offset_noise: float = 0.0, loss: str = "mse", huber_delta: float = 0.1):
        for key, value, choices in (("weighting", weighting, WEIGHTINGS),
                                    ("t_sampling", t_sampling, T_SAMPLINGS),
                                    ("loss", loss, LOSSES)):
            check_choice(f"objective.{key}", value, choices)
        for key, value in (("snr_gamma", snr_gamma), ("p2_k", p2_k), ("huber_delta", huber_delta)):
            check_number(f"objective.{key}", value, above=0)
        for key, value in (("p2_gamma", p2_gamma), ("offset_noise", offset_noise)):
            check_number(f"objective.{key}", value, minimum=0)
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ConfigError(f"this objective trains a DDPM noise process; the run's is "
                              f"{type(scheduler).__name__}, in continuous time: use "
                              f"objective=dsm.")
        self.scheduler = scheduler
        self.prediction_type = scheduler.prediction_type
        self.weighting, self.t_sampling, self.loss_kind = weighting, t_sampling, loss
        self.snr_gamma, self.p2_gamma, self.p2_k = float(snr_gamma), float(p2_gamma), float(p2_k)
        self.offset_noise, self.huber_delta = float(offset_noise), float(huber_delta)
        self.num_train_timesteps = len(scheduler.alphas_cumprod)
        a = scheduler.alphas_cumprod.double()
        self.snr = a / (1 - a)  # float64, on the CPU; inf where a_t = 1 never happens here
        self._weights_on: dict[torch.device, Tensor] = {}

    # ------------------------------------------------------------------ draws
    def sample_timesteps(self, n: int, device: torch.device, generator: torch.Generator):
        """n training timesteps in [0, T), from ``generator`` on ``device``."""
        T = self.num_train_timesteps
        if self.t_sampling == "uniform":
            return torch.randint(0, T, (n,), device=device, generator=generator)
        u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
        slots = torch.randperm(n, device=device, generator=generator)
        return ((slots + u) * (T / n)).long().clamp_(max=T - 1)

    def sample_noise(self, shape: tuple[int, ...], device: torch.device,
                     generator: torch.Generator) -> Tensor:
        """Standard normal noise of ``shape``, plus the offset term when it is on (drawn only
        then, so the default draws are the same as without an objective)."""
        noise = torch.randn(shape, device=device, generator=generator)
        if self.offset_noise:
            noise = noise + self.offset_noise * torch.randn(
                (*shape[:2], *([1] * (len(shape) - 2))), device=device, generator=generator)
        return noise

    def noised(self, x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(network input, the time it is told, target) for clean ``x0``: x_t and t itself
        here; a continuous-time objective scales x_t and maps t (``ScoreMatching``)."""
        return (self.scheduler.add_noise(x0, noise, t), t,
                self.scheduler.training_target(x0, noise, t))

    # ---------------------------------------------------------------- weights
    def weights(self, timesteps: Tensor) -> Tensor:
        """Per-sample loss weights (float32, on the timesteps' device)."""
        table = self._weights_on.get(timesteps.device)
        if table is None:
            table = self._weights_on[timesteps.device] = self.weight_table().to(
                timesteps.device, torch.float32)
        return table[timesteps]

    def weight_table(self) -> Tensor:
        """The weight of every timestep, in float64, for the model's own output."""
        snr = self.snr
        if self.weighting == "none":
            return torch.ones_like(snr)
        if self.weighting == "p2":
            return error_ratio(snr, self.prediction_type) / (self.p2_k + snr) ** self.p2_gamma
        # min(SNR, gamma) on the x_0 error, written per output so that SNR = 0 (the last
        # step of a zero-terminal-SNR schedule, which needs v or x_0) gives 0, not 0 / 0
        clamped = torch.minimum(snr, torch.full_like(snr, self.snr_gamma))
        if self.prediction_type == "epsilon":
            return clamped / snr
        if self.prediction_type == "sample":
            return clamped
        return clamped / (snr + 1)

    # ------------------------------------------------------------------- loss
    def loss(self, prediction: Tensor, target: Tensor, timesteps: Tensor) -> Tensor:
        """The weighted mean over the batch of each sample's mean elementwise error."""
        prediction = prediction.float()
        if self.loss_kind == "l1":
            error = F.l1_loss(prediction, target, reduction="none")
        elif self.loss_kind == "huber":
            error = F.huber_loss(prediction, target, delta=self.huber_delta, reduction="none")
        else:
            error = F.mse_loss(prediction, target, reduction="none")
        if self.weighting == "none":
            return error.mean()
        return (self.weights(timesteps) * error.flatten(1).mean(1)).mean()

    def __repr__(self) -> str:
        return (f"Objective(prediction_type={self.prediction_type!r}, "
                f"weighting={self.weighting!r}, t_sampling={self.t_sampling!r}, "
                f"offset_noise={self.offset_noise}, loss={self.loss_kind!r})")


def error_ratio(snr: Tensor, prediction_type: str) -> Tensor:
    """|d eps|^2 / |d output|^2 for an output of ``prediction_type`` at these SNRs."""
    if prediction_type == "epsilon":
        return torch.ones_like(snr)
    if prediction_type == "sample":
        return snr
    return snr / (snr + 1)
