"""Beta schedules: pure functions of the number of training steps ``T``.

Every schedule returns a float64 tensor of ``T`` betas, ``betas[t]`` being the
variance of the noise added at forward step ``t`` (0-based). Float64 because
``alphas_cumprod`` is a product of up to thousands of factors close to one, and
its small late values drive the reverse step; the schedulers cast to the
sample's dtype only when they apply a coefficient.

Endpoint defaults scale with ``T``: a ``None`` ``beta_start``/``beta_end`` means
the value at ``T = 1000`` times ``1000 / T`` (the rule of the DDPM tutorials and
improved DDPM), so that the sum of the betas, the total noise, does not change
with ``T``. Endpoints given explicitly are used as given, as diffusers does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion.checks import check_int

Tensor = torch.Tensor

#: Endpoints at T = 1000. ``scaled_linear`` is Stable Diffusion's schedule and
#: only makes sense with its own endpoints; ``sigmoid`` reuses DDPM's.
_DEFAULT_ENDPOINTS = {
    "linear": (1e-4, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "sigmoid": (1e-4, 0.02),
}


def _endpoints(name: str, T: int, beta_start: float | None, beta_end: float | None):
    """Explicit endpoints as given; missing ones from the T = 1000 default times 1000 / T."""
    check_int("num_train_timesteps", T)
    default_start, default_end = _DEFAULT_ENDPOINTS[name]
    start = default_start * 1000 / T if beta_start is None else float(beta_start)
    end = default_end * 1000 / T if beta_end is None else float(beta_end)
    if not (0.0 < start < 1.0 and 0.0 < end < 1.0):
        raise ValueError(
            f"The {name} schedule needs 0 < beta_start, beta_end < 1, got beta_start={start:g} "
            f"and beta_end={end:g} at T={T}; pass smaller endpoints or a larger T."
        )
    return start, end


def linear(T: int, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """DDPM's schedule (Ho et al. 2020): betas evenly spaced from 1e-4 to 0.02 at T = 1000."""
    start, end = _endpoints("linear", T, beta_start, beta_end)
    return torch.linspace(start, end, T, dtype=torch.float64)


def scaled_linear(T: int, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """Latent diffusion's schedule: sqrt(beta) evenly spaced, then squared (as diffusers).

    Defaults are Stable Diffusion's 0.00085 to 0.012 at T = 1000.
    """
    start, end = _endpoints("scaled_linear", T, beta_start, beta_end)
    return torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2


def sigmoid(T: int, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """GeoDiff's schedule (as diffusers): a sigmoid of a -6..6 ramp, mapped onto [start, end]."""
    start, end = _endpoints("sigmoid", T, beta_start, beta_end)
    ramp = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
    return torch.sigmoid(ramp) * (end - start) + start


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's schedule (Nichol & Dhariwal 2021): alpha_bar(t) = f(t) / f(0).

    f(u) = cos(((u + s) / (1 + s)) * pi / 2) ** 2 on u = t / T. The offset ``s``
    keeps the first betas from vanishing; betas are clipped at ``max_beta`` to
    avoid the singularity at u = 1, where f reaches zero.
    """
    check_int("num_train_timesteps", T)

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    u = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = f(u)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale ``betas`` so that the last step has zero signal (Lin et al. 2023, Algorithm 1).

    Most schedules leave a little signal at t = T - 1, yet sampling starts from
    pure noise; models then never learn to make very dark or bright images.
    sqrt(alpha_bar) is shifted so that its last value is 0 and scaled so that its
    first value is unchanged. Same computation as diffusers, in the input's dtype.
    """
    alphas_bar_sqrt = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
}


def schedule_ends(name: str, T: int) -> tuple[float | None, float | None]:
    """The (beta_start, beta_end) schedule ``name`` uses for ``T`` steps when they are left
    unset; (None, None) for a schedule without them (cosine)."""
    if name not in _DEFAULT_ENDPOINTS:
        return None, None
    start, end = _DEFAULT_ENDPOINTS[name]
    return start * 1000 / T, end * 1000 / T


def get_beta_schedule(
    name: str, T: int, beta_start: float | None = None, beta_end: float | None = None
) -> Tensor:
    """The betas of schedule ``name`` for ``T`` training steps, float64, shape (T,)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"Unknown beta schedule {name!r}; valid names are {', '.join(sorted(BETA_SCHEDULES))}."
        )
    if name not in _DEFAULT_ENDPOINTS:
        if beta_start is not None or beta_end is not None:
            raise ValueError(
                f"The {name} schedule has no beta_start/beta_end; leave them unset (None)."
            )
        return BETA_SCHEDULES[name](T)
    return BETA_SCHEDULES[name](T, beta_start, beta_end)
