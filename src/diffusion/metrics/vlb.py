"""The variational bound of a DDPM model in bits per dimension (Ho et al. 2020, eq. 5; Nichol &
Dhariwal 2021, section 2 and their ``_vb_terms_bpd``): an upper bound on -log p(x_0) for 8-bit
images in [-1, 1],

    L = KL(q(x_T | x_0) || N(0, I)) + sum_{t >= 1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        - log p(x_0 | x_1),

with x_t ~ q(x_t | x_0) drawn once per term, the model's p(x_{t-1} | x_t) = N(posterior mean at
its x_0, the fixed variance of ``variance_type``), and the decoder p(x_0 | x_1) the discretised
Gaussian over the 256 bins of each pixel (edges at +-1 open). T model evaluations per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion.checks import check_choice

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, int], Tensor]
"""(x_t, t) -> the network's output at integer timestep t (the scheduler's prediction type)."""


@dataclass
class VariationalBound:
    """Per-image terms in nats (float64): the prior KL, the sum of the T - 1 middle KLs, the
    decoder's negative log-likelihood; ``bits_per_dim`` is their total over D ln 2."""

    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    dim: int

    @property
    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.decoder

    @property
    def bits_per_dim(self) -> Tensor:
        return self.total / (self.dim * math.log(2))


def normal_kl(mean1: Tensor, var1: Tensor | float, mean2: Tensor, var2: Tensor | float) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element."""
    var1, var2 = torch.as_tensor(var1, dtype=torch.float64), torch.as_tensor(var2,
                                                                            dtype=torch.float64)
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def per_image(values: Tensor) -> Tensor:
    """The sum over each image's elements, (B,)."""
    return values.flatten(1).sum(1)


def _phi(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: float | Tensor) -> Tensor:
    """log P(bin of x) under N(mean, std^2) for x on the 256-level grid of [-1, 1] (bins of
    width 2/255 centred on the levels; the first and last open to -inf and +inf)."""
    centred = x - mean
    upper = _phi((centred + 1.0 / 255) / std)
    lower = _phi((centred - 1.0 / 255) / std)
    log_upper = torch.log(upper.clamp(min=1e-12))
    log_one_minus_lower = torch.log((1.0 - lower).clamp(min=1e-12))
    log_delta = torch.log((upper - lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_upper, torch.where(x > 0.999, log_one_minus_lower,
                                                          log_delta))


@torch.no_grad()
def ddpm_vlb(scheduler, model_fn: ModelFn, x0: Tensor, *, variance_type: str = "fixed_small",
             generator: torch.Generator | None = None) -> VariationalBound:
    """The bound for images ``x0`` (B, C, H, W) in [-1, 1] on the 8-bit grid, under the model
    ``model_fn`` and the training ``scheduler`` (its T steps; see the module docstring)."""
    check_choice("variance_type", variance_type, ("fixed_small", "fixed_large"))
    x0 = x0.double()
    a = scheduler.alphas_cumprod.double()
    betas = scheduler.betas.double()
    T = len(a)
    a_prev = torch.cat([a.new_ones(1), a[:-1]])
    posterior_var = betas * (1 - a_prev) / (1 - a)
    # fixed_small clips the t = 0 variance (0) to t = 1's, as improved DDPM does for its log
    model_var = (torch.cat([posterior_var[1:2], posterior_var[1:]]) if variance_type ==
                 "fixed_small" else torch.cat([posterior_var[1:2], betas[1:]]))
    prior = per_image(normal_kl(a[-1].sqrt() * x0, 1 - a[-1], torch.zeros_like(x0), 1.0))
    diffusion = torch.zeros(x0.shape[0], dtype=torch.float64)
    decoder = torch.zeros_like(diffusion)
    for t in range(T - 1, -1, -1):
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x_t = a[t].sqrt() * x0 + (1 - a[t]).sqrt() * noise
        output = model_fn(x_t.to(torch.float32), t).double()
        x0_hat = scheduler.pred_original_sample(output, t, x_t).clamp(-1, 1)
        coef_x0 = a_prev[t].sqrt() * betas[t] / (1 - a[t])
        coef_xt = (1 - betas[t]).sqrt() * (1 - a_prev[t]) / (1 - a[t])
        model_mean = coef_x0 * x0_hat + coef_xt * x_t
        if t == 0:
            decoder = -per_image(discretized_gaussian_log_likelihood(
                x0, model_mean, model_var[0].sqrt()))
        else:
            true_mean = coef_x0 * x0 + coef_xt * x_t
            diffusion = diffusion + per_image(normal_kl(true_mean, posterior_var[t], model_mean,
                                                        model_var[t]))
    return VariationalBound(prior=prior, diffusion=diffusion, decoder=decoder,
                            dim=x0[0].numel())
