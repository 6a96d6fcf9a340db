"""Guidance: steer a denoiser towards a class label while it samples.

Two kinds, which combine:

- Classifier-free guidance (Ho & Salimans 2022). A model trained with labels dropped to its
  null label predicts both ``cond = f(x_t, t, y)`` and ``uncond = f(x_t, t, null)``; the
  guided prediction is ``uncond + w * (cond - uncond)``. Both halves come from one batched
  forward of 2B images. ``w = 1`` is the conditional model and ``w = 0`` the unconditional
  one: those take a single forward of B images, and are exactly the direct calls (w = 0
  with ``rescale`` takes both halves, since the rescale reads the conditional one). The
  combination is made in the model's own output space (epsilon, x_0 or v): with x_t fixed
  each is an affine function of the others with the same coefficients for both halves, and
  the weights sum to one, so the guided sample is the same whichever the model predicts.
  ``rescale`` (Lin et al. 2024, section 3.4) pulls the guided prediction's standard
  deviation back towards the conditional one's, as diffusers' ``rescale_noise_cfg``; that
  step is not affine, and it is taken in the model's output space too, as diffusers does.
- Classifier guidance (Dhariwal & Nichol 2021). A classifier trained on noised images gives
  grad_x log p(y | x_t, t); the score is shifted by ``s`` times it, which for the noise
  prediction reads ``eps - s * sqrt(1 - a_t) * grad``, converted here to the model's output
  space. It works on conditional (guided or not) and unconditional models alike.

``Guidance`` holds the settings; ``Guidance.denoiser`` wraps a model's forward into the
function ``(x_t, t, y) -> output`` that the pipeline's sampling loop calls, so no sampler
knows about guidance. The timesteps may be fractional (Euler, Heun): a_t is then read where
those samplers read it, from sigma interpolated linearly in t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.checks import check_number
from diffusion.schedulers import NoiseScheduler
from diffusion.schedulers.sigmas import training_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
            rescale: float = 0.0) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, then with ``rescale`` > 0 its per-sample standard
    deviation moved that share of the way to ``cond``'s (Lin et al. 2024, eq. 15-16)."""
    guided = uncond + scale * (cond - uncond)
    if rescale:
        dims = list(range(1, cond.ndim))
        ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = guided * (rescale * ratio + (1.0 - rescale))
    return guided


def class_rows(num_classes: int, n: int, max_rows: int = 16) -> tuple[torch.Tensor, int]:
    """Labels for a grid of one row per class (the first ``max_rows`` classes) from at most
    ``n`` images: (labels row by row, images per row)."""
    rows = min(num_classes, max_rows, n)
    columns = n // rows
    return torch.arange(rows).repeat_interleave(columns), columns


def alpha_bar_at(scheduler: NoiseScheduler, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar at (possibly fractional) timesteps ``t``: 1 / (1 + sigma(t)^2) with sigma
    interpolated linearly between training steps, as the Euler and Heun samplers place their
    noise levels; exact at integer t. float64, on ``t``'s device."""
    sigmas = training_sigmas(scheduler.alphas_cumprod).to(t.device)
    t = t.double().clamp(0, len(sigmas) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(sigmas) - 1)
    w = t - low
    sigma = (1 - w) * sigmas[low] + w * sigmas[high]
    return 1.0 / (1.0 + sigma**2)


def epsilon_shift_factor(prediction_type: str, alpha_bar: torch.Tensor) -> torch.Tensor:
    """How a shift d of the noise prediction shows in the model's output at fixed x_t:
    epsilon d, x_0 -sqrt((1 - a) / a) d, v d / sqrt(a) (from x_t = sqrt(a) x_0 + sqrt(1 - a)
    eps and v = sqrt(a) eps - sqrt(1 - a) x_0)."""
    if prediction_type == "epsilon":
        return torch.ones_like(alpha_bar)
    if prediction_type == "sample":
        return -((1 - alpha_bar) / alpha_bar).sqrt()
    return 1.0 / alpha_bar.sqrt()


def class_log_prob_grad(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
    """grad_x log p(y | x, t) of a noise-aware ``classifier(x, t) -> logits``, in float32
    (outside any autocast: a bf16 gradient would be too coarse to steer with)."""
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.detach().float().requires_grad_(True)
        log_p = F.log_softmax(classifier(x, t).float(), dim=-1)
        picked = log_p.gather(1, y[:, None]).sum()
        return torch.autograd.grad(picked, x)[0]


@dataclass(frozen=True)
class Guidance:
    """How to guide a draw: ``scale`` (classifier-free weight w; 1: the conditional model as it
    is), ``rescale`` (0 to 1; Lin et al.'s phi), ``classifier`` (a noise-aware classifier
    ``(x_t, t) -> logits``, with ``num_classes``) and ``classifier_scale`` (s)."""

    scale: float = 1.0
    rescale: float = 0.0
    classifier: nn.Module | None = None
    classifier_scale: float = 0.0

    def __post_init__(self):
        for key, value in (("guidance_scale", self.scale),
                           ("classifier_scale", self.classifier_scale)):
            check_number(key, value, minimum=0)
        check_number("guidance_rescale", self.rescale, 0, 1)
        if self.classifier is not None and not hasattr(self.classifier, "num_classes"):
            raise ValueError(f"{type(self.classifier).__name__} has no num_classes: the "
                             "classifier must say how many classes it tells apart.")

    @property
    def classifier_free(self) -> bool:
        """Whether the unconditional prediction is needed (any weight but 1)."""
        return self.scale != 1

    def label_classes(self, model_classes: int | None) -> int | None:
        """How many classes the labels of a guided draw index: the model's, or the
        classifier's when the model is unconditional; they must agree when both exist."""
        if self.classifier_free and model_classes is None:
            raise ValueError(f"guidance_scale={self.scale:g} needs a class-conditional model "
                             "trained with label dropout; this model is unconditional: leave "
                             "guidance_scale out (or use a classifier).")
        if self.classifier is None:
            return model_classes
        classes = int(self.classifier.num_classes)
        if model_classes is not None and classes != model_classes:
            raise ValueError(f"The classifier tells {classes} classes apart but the model has "
                             f"{model_classes}: use a classifier trained on the model's data.")
        return classes

    def denoiser(self, forward: Callable, model_classes: int | None,
                 scheduler: NoiseScheduler, device: torch.device | str = "cpu") -> Denoiser:
        """``forward(x, t, y)`` with this guidance applied; ``scheduler`` is the training
        one (its noise process and prediction type). The classifier moves to ``device``."""
        if self.classifier is not None:
            self.classifier.to(device).eval()
        def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            out = self._classifier_free(forward, model_classes, x, t, y)
            if self.classifier is not None and self.classifier_scale:
                out = out + self._classifier_shift(scheduler, x, t, y).to(out.dtype)
            return out
        return guided

    def _classifier_free(self, forward, model_classes, x, t, y):
        if model_classes is None:
            return forward(x, t, None)
        if self.scale == 1:
            return forward(x, t, y)
        if self.scale == 0 and not self.rescale:
            return forward(x, t, None)  # None: the null label for every sample
        null = torch.full_like(y, model_classes)
        both = forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).float()
        cond, uncond = both.chunk(2)
        return combine(cond, uncond, self.scale, self.rescale)

    def _classifier_shift(self, scheduler: NoiseScheduler, x, t, y) -> torch.Tensor:
        """The output shift for ``eps - s * sqrt(1 - a_t) * grad log p(y | x_t)``."""
        a = alpha_bar_at(scheduler, t).reshape(-1, *([1] * (x.ndim - 1)))
        grad = class_log_prob_grad(self.classifier, x, t, y).double()
        shift = -self.classifier_scale * (1 - a).sqrt() * grad
        return (shift * epsilon_shift_factor(scheduler.prediction_type, a)).float()
