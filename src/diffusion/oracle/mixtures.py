"""Gaussian mixtures whose noised distributions, scores and denoisers are known in closed form.

With x_0 ~ sum_k w_k N(mu_k, s_k^2 I) and q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I), a =
alpha_bar(t), the noised data is again a mixture,

    x_t ~ sum_k w_k N(sqrt(a) mu_k, v_k I),    v_k = a s_k^2 + 1 - a,

so its score is sum_k r_k(x_t) (sqrt(a) mu_k - x_t) / v_k, with r_k the responsibilities
(a softmax of log w_k + log N(x_t; sqrt(a) mu_k, v_k I), taken with logsumexp in float64).
Tweedie's formula then gives the best possible network outputs: E[eps | x_t] =
-sqrt(1 - a) score(x_t), E[x_0 | x_t] = (x_t - sqrt(1 - a) E[eps | x_t]) / sqrt(a) and the
v-prediction sqrt(a) E[eps | x_t] - sqrt(1 - a) E[x_0 | x_t]. ``ExactModel`` answers with these,
so a sampler driven by it shows its own discretisation error and nothing of training.

``SlicedW2`` and ``mode_stats`` measure how far samples are from the mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.checks import check_choice
from diffusion.processes.base import PREDICTION_TYPES as PROCESS_PREDICTION_TYPES
from diffusion.schedulers.base import PREDICTION_TYPES

Tensor = torch.Tensor
f64 = torch.float64
CHUNK = 2**16  # numbers per block of the exact model's float64 math


@dataclass(frozen=True)
class GaussianMixture:
    """x_0 ~ sum_k ``weights[k]`` N(``means[k]``, ``stds[k]``^2 I): (K,), (K, D), (K,) float64."""

    name: str
    weights: Tensor
    means: Tensor
    stds: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact draws of x_0, (n, D) float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=f64)
        return self.means[k] + self.stds[k, None] * noise

    def _log_components(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """log w_k + log N(x; sqrt(a) mu_k, v_k I), (B, K), and v_k, (K,) or (B, K).

        |x - sqrt(a) mu_k|^2 is expanded as |x|^2 - 2 sqrt(a) x.mu_k + a |mu_k|^2, so no
        (B, K, D) tensor is built, even when ``a`` differs per sample (shape (B, 1)).
        """
        var = a * self.stds**2 + (1.0 - a)
        dist2 = ((x * x).sum(1, keepdim=True) - 2.0 * a.sqrt() * (x @ self.means.T)
                 + a * (self.means**2).sum(1)).clamp_min(0.0)
        log_norm = -0.5 * self.dim * torch.log(2.0 * math.pi * var)
        return self.weights.log() + log_norm - 0.5 * dist2 / var, var

    def log_prob(self, x: Tensor, a: float | Tensor = 1.0) -> Tensor:
        """log q_t(x) of the mixture noised to alpha_bar = ``a`` (a = 1: the data), (B,)."""
        log_comp, _ = self._log_components(x, _alpha(a))
        return torch.logsumexp(log_comp, dim=1)

    def score(self, x: Tensor, a: float | Tensor) -> Tensor:
        """grad_x log q_t(x) at alpha_bar = ``a`` (a float, or (B, 1) per sample), (B, D)."""
        a = _alpha(a)
        log_comp, var = self._log_components(x, a)
        resp = (log_comp - log_comp.logsumexp(dim=1, keepdim=True)).exp()  # r_k, (B, K)
        resp_over_var = resp / var
        return a.sqrt() * (resp_over_var @ self.means) - x * resp_over_var.sum(1, keepdim=True)

    def x0_mean(self, x: Tensor, a: float | Tensor) -> Tensor:
        """E[x_0 | x_t = x] at alpha_bar = ``a``, summed over the components' posteriors
        (mu_k + sqrt(a) s_k^2 / v_k (x - sqrt(a) mu_k)), so it holds at a = 0 too (the
        mixture's mean), where (x - sqrt(1 - a) eps) / sqrt(a) is 0 / 0."""
        a = _alpha(a)
        log_comp, var = self._log_components(x, a)
        resp = (log_comp - log_comp.logsumexp(dim=1, keepdim=True)).exp()  # (B, K)
        gain = a.sqrt() * self.stds**2 / var  # (K,) or (B, K)
        return resp @ self.means + (resp * gain).sum(1, keepdim=True) * x \
            - (resp * gain * a.sqrt()) @ self.means

    def eps(self, x: Tensor, a: float | Tensor) -> Tensor:
        """E[eps | x_t = x] = -sqrt(1 - a) score(x): the exact epsilon-prediction."""
        return -(1.0 - _alpha(a)).sqrt() * self.score(x, a)

    def prediction(self, x: Tensor, a: float | Tensor, prediction_type: str) -> Tensor:
        """The exact network output of ``prediction_type`` at x_t = ``x``, alpha_bar = ``a``."""
        a = _alpha(a)
        eps = self.eps(x, a)
        if prediction_type == "epsilon":
            return eps
        x0 = (x - (1.0 - a).sqrt() * eps) / a.sqrt()
        if prediction_type == "sample":
            return x0
        return a.sqrt() * eps - (1.0 - a).sqrt() * x0


def _alpha(a: float | Tensor) -> Tensor:
    a = torch.as_tensor(a, dtype=f64)
    return a if a.ndim == 0 else a.reshape(-1, 1)


def ring(num_modes: int = 8, radius: float = 0.8, std: float = 0.05) -> GaussianMixture:
    """``num_modes`` equal modes on a circle in 2-D. Radius + 4 std = 1: the data stays inside
    [-1, 1], the range image models see, and a clip_sample of 1 would not cut the data."""
    angle = torch.arange(num_modes, dtype=f64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture("ring", torch.full((num_modes,), 1.0 / num_modes, dtype=f64),
                           means, torch.full((num_modes,), std, dtype=f64))


def mixture64(dim: int = 64, num_modes: int = 10, seed: int = 64) -> GaussianMixture:
    """``num_modes`` modes in ``dim`` dimensions with uneven weights (5% to 15%) and widths
    (std 0.05 to 0.12), means uniform in [-0.5, 0.5]^dim: 0.5 + 4 * 0.12 < 1, inside [-1, 1].
    Drawn from its own fixed ``seed``, so the data set is the same whatever the run's seed."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(num_modes, generator=g, dtype=f64)
    weights = 0.05 + 0.10 * raw
    weights = weights / weights.sum()
    means = torch.rand(num_modes, dim, generator=g, dtype=f64) - 0.5
    stds = 0.05 + 0.07 * torch.rand(num_modes, generator=g, dtype=f64)
    return GaussianMixture("mix64", weights, means, stds)


DATASETS = {"ring": ring, "mix64": mixture64}


class ExactModel(nn.Module):
    """The Bayes-optimal network for ``mixture`` under a scheduler's noise process.

    Called as the pipeline calls a network, ``model(x, t, y)`` with x of shape (B, D, 1, 1)
    (the mixture's D coordinates as channels) and ``t`` an int, a 0-d tensor or one
    timestep per sample. alpha_bar is looked up in ``alphas_cumprod`` (the training
    scheduler's float64 table) at integer timesteps; a fractional timestep, as samplers in
    sigma space may pass, gets sigma = sqrt((1 - a) / a) interpolated linearly between its
    integer neighbours, which is how such samplers place their sigmas. With ``process`` (a
    ``diffusion.processes.Process``), a timestep is that process's model time
    (``Process.time_of_model_time``) and the output is the process's own training target at the
    mixture's posterior means (any time map, any sigma_data). ``calls`` counts the forward
    passes: the real number of function evaluations (NFE).
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Tensor | None = None,
                 prediction_type: str = "epsilon", process=None):
        super().__init__()
        check_choice("prediction_type", prediction_type,
                     PROCESS_PREDICTION_TYPES if process is not None else PREDICTION_TYPES)
        if (alphas_cumprod is None) == (process is None):
            raise ValueError("give the exact model one noise process: alphas_cumprod or "
                             "process.")
        self.mixture = mixture
        self.process = process
        self.alphas_cumprod = None if alphas_cumprod is None else alphas_cumprod.to(f64)
        self.prediction_type = prediction_type
        self.calls = 0

    def alpha_bar(self, t: int | Tensor, batch: int) -> Tensor:
        """alpha_bar of the DDPM table at timestep(s) ``t``: a 0-d tensor, or (batch, 1) for
        one per sample."""
        if self.process is not None:
            raise ValueError("a model over a continuous process reads its own time map: call "
                             "it, it has no DDPM table to look alpha_bar up in.")
        t = torch.as_tensor(t).to("cpu", f64)
        if t.numel() not in (1, batch):
            raise ValueError(f"the model takes one timestep or one per sample ({batch}); "
                             f"got {t.numel()}.")
        if t.numel() > 1 and (t == t.flatten()[0]).all():
            t = t.flatten()[0]  # the usual case, one timestep for the batch: cheaper math
        T = len(self.alphas_cumprod)
        if t.min() < 0 or t.max() > T - 1:
            raise ValueError(f"timesteps must lie in [0, {T - 1}]; got {t.min().item()} "
                             f"to {t.max().item()}.")
        lo = t.floor().long()
        if (t == lo).all():
            a = self.alphas_cumprod[lo]
        else:
            sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
            hi, frac = (lo + 1).clamp(max=T - 1), t - lo
            a = 1.0 / (1.0 + (sigmas[lo] * (1.0 - frac) + sigmas[hi] * frac) ** 2)
        return a.reshape(()) if a.numel() == 1 else a.reshape(-1, 1)

    def forward(self, x: Tensor, t: int | Tensor, y: Tensor | None = None) -> Tensor:
        if self.process is not None:
            return self._process_forward(x, t)
        self.calls += 1
        flat = x.reshape(len(x), -1).to(f64)
        a = self.alpha_bar(t, len(x))
        # blocks of about 2^16 numbers keep the float64 temporaries in cache (a third faster
        # at 64-D than all 10,000 rows at once)
        rows = max(1, CHUNK // max(self.mixture.dim, len(self.mixture.weights)))
        parts = [self.mixture.prediction(block, a if a.ndim == 0 else a[i:i + rows],
                                         self.prediction_type)
                 for i, block in zip(range(0, len(flat), rows), flat.split(rows), strict=True)]
        return torch.cat(parts).to(x.dtype).reshape(x.shape)


    def _process_forward(self, x: Tensor, model_time: int | Tensor) -> Tensor:
        """The exact output under ``process``: x is c_in(t) x_t at the network's time
        (``Process.time_of_model_time``); the mixture's epsilon at x_t, and the output is the
        process's own training target for it (any sigma_data, any time map)."""
        self.calls += 1
        process = self.process
        t = process.time_of_model_time(torch.as_tensor(model_time).to("cpu", f64)).flatten()
        t = t[:1] if t.numel() > 1 and bool((t == t[0]).all()) else t
        alpha, sigma = process.alpha(t).reshape(-1, 1), process.sigma(t).reshape(-1, 1)
        x_t = x.reshape(len(x), -1).to(f64) / process.c_in(t).reshape(-1, 1)
        scale = (alpha**2 + sigma**2).sqrt()  # x_t / scale = sqrt(A) x_0 + sqrt(1 - A) eps
        a = alpha**2 / scale**2
        rows = max(1, CHUNK // max(self.mixture.dim, len(self.mixture.weights)))
        parts = []
        for i in range(0, len(x_t), rows):
            rows_of = slice(0, 1) if len(t) == 1 else slice(i, i + rows)
            part_a = a[rows_of].reshape(()) if len(t) == 1 else a[rows_of]
            block = x_t[i:i + rows] / scale[rows_of]
            parts.append((self.mixture.eps(block, part_a), self.mixture.x0_mean(block, part_a)))
        eps = torch.cat([e for e, _ in parts])
        x0 = torch.cat([m for _, m in parts])  # E[x_0 | x_t]: exact at alpha = 0 too
        out = process.training_target(x0, eps, t if len(t) == 1 else t.reshape(-1))
        return out.to(x.dtype).reshape(x.shape)


def projections(dim: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` directions uniform on the unit sphere in ``dim`` dimensions, (count, dim)."""
    theta = torch.randn(count, dim, generator=generator, dtype=f64)
    return theta / theta.norm(dim=1, keepdim=True)


class SlicedW2:
    """Sliced Wasserstein-2 distance to a fixed ``reference`` set (n, D): the root mean over
    ``directions`` (count, D) of the squared 1-D W2 between the projected sets, which for
    equally many samples is the mean squared difference of their order statistics. The
    reference's sorted projections are computed once, for the many sets compared with it."""

    def __init__(self, reference: Tensor, directions: Tensor):
        self.directions = directions
        self.reference = self._sorted(reference)

    def _sorted(self, x: Tensor) -> Tensor:
        return (self.directions @ x.to(f64).T).sort(dim=1).values  # (count, n), rows sorted

    def __call__(self, x: Tensor) -> float:
        if len(x) != self.reference.shape[1]:
            raise ValueError(f"sliced W2 compares equally sized sample sets; got {len(x)} "
                             f"samples against {self.reference.shape[1]}.")
        return float(((self._sorted(x) - self.reference) ** 2).mean().sqrt())


def mode_stats(mixture: GaussianMixture, x: Tensor, min_share: float = 0.02,
               within_std: float = 3.0) -> dict[str, float]:
    """Each sample goes to its nearest mean. ``coverage``: the fraction of modes holding at
    least ``min_share`` of the samples (``covered`` of ``modes``); ``near``: the share of
    samples within ``within_std`` stds of their mode; ``near_expected``: that share for exact
    samples (a chi distribution with D degrees of freedom; 0.989 in 2-D, about 0 in 64-D,
    where it says nothing);
    ``spread``: the root mean square distance to the own mode over sqrt(D) times its std,
    about 1 for exact samples (0.99 in 2-D, where the nearest mean is not always the own
    one), below 1 for a sampler that shrinks the modes."""
    d2 = torch.cdist(x.to(f64), mixture.means) ** 2
    nearest = d2.argmin(dim=1)
    share = torch.bincount(nearest, minlength=len(mixture.weights)).to(f64) / len(x)
    own_d2 = d2.gather(1, nearest[:, None]).squeeze(1)
    near = (own_d2 <= (within_std * mixture.stds[nearest]) ** 2).to(f64).mean()
    spread = (own_d2 / (mixture.dim * mixture.stds[nearest] ** 2)).mean().sqrt()
    expected = torch.special.gammainc(torch.tensor(mixture.dim / 2, dtype=f64),
                                      torch.tensor(within_std**2 / 2, dtype=f64))
    covered = int((share >= min_share).sum())
    return {"covered": covered, "modes": len(share), "coverage": covered / len(share),
            "near": float(near), "spread": float(spread),
            "near_expected": float(expected), "min_share": min_share, "within_std": within_std}
