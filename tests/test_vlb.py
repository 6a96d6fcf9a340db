"""The DDPM variational bound in bits/dim, against its closed form where the model is exact:
data a single image, whose posterior the exact model reproduces."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.metrics.vlb import ddpm_vlb, discretized_gaussian_log_likelihood, normal_kl
from diffusion.schedulers import DDPMScheduler


def _point_model(sched, x0):
    """The exact epsilon-network for data that is the one image ``x0``."""
    def model(x_t, t):
        a = sched.alphas_cumprod[t].double()
        return ((x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()
    return model


def _levels(seed: int) -> torch.Tensor:
    k = torch.randint(0, 256, (2, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    return (2 * k / 255 - 1).double()


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_the_bound_of_an_exact_model_is_its_closed_form(variance_type):
    sched = DDPMScheduler(num_train_timesteps=100)
    x0 = _levels(0)
    bound = ddpm_vlb(sched, _point_model(sched, x0), x0, variance_type=variance_type,
                     generator=torch.Generator().manual_seed(1))
    a, betas = sched.alphas_cumprod.double(), sched.betas.double()
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    post = betas * (1 - a_prev) / (1 - a)
    d = x0[0].numel()
    prior = 0.5 * ((a[-1] * x0**2).flatten(1).sum(1) + d * (1 - a[-1] - 1 - torch.log(1 - a[-1])))
    torch.testing.assert_close(bound.prior, prior)
    # the exact model's mean is the true posterior mean: only the variances can differ
    model_var = post[1:] if variance_type == "fixed_small" else betas[1:]
    middle = d * 0.5 * (torch.log(model_var / post[1:]) + post[1:] / model_var - 1).sum()
    torch.testing.assert_close(bound.diffusion, middle.expand(2), rtol=1e-9, atol=1e-9)
    if variance_type == "fixed_small":
        assert float(bound.diffusion.abs().max()) < 1e-9
    # decoder: N(x0, post[1]) over each pixel's bin of width 2/255 (open at the ends)
    std = math.sqrt(post[1])
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    inner = math.log(phi(1 / 255 / std) - phi(-1 / 255 / std))
    edge = math.log(phi(1 / 255 / std))
    on_edge = ((x0.abs() > 0.999).flatten(1).sum(1)).double()
    torch.testing.assert_close(bound.decoder, -(on_edge * edge + (d - on_edge) * inner))
    total_bits = bound.total / (d * math.log(2))
    torch.testing.assert_close(bound.bits_per_dim, total_bits)


def test_a_wrong_model_pays_in_the_bound():
    sched = DDPMScheduler(num_train_timesteps=100)
    x0 = _levels(2)
    exact = ddpm_vlb(sched, _point_model(sched, x0), x0, generator=torch.Generator().manual_seed(3))
    wrong = ddpm_vlb(sched, _point_model(sched, x0 * 0.9), x0,
                     generator=torch.Generator().manual_seed(3))
    assert bool((wrong.bits_per_dim > exact.bits_per_dim + 0.1).all())


def test_pieces_against_closed_forms():
    m1, m2 = torch.tensor([0.3]), torch.tensor([-0.2])
    kl = normal_kl(m1.double(), 0.5, m2.double(), 2.0)
    torch.testing.assert_close(kl, torch.tensor([0.5 * (math.log(4) + (0.5 + 0.25) / 2 - 1)],
                                                dtype=torch.float64))
    levels = torch.tensor([-1.0, 1.0, 2 * 100 / 255 - 1], dtype=torch.float64)
    wide = discretized_gaussian_log_likelihood(levels, torch.zeros(3, dtype=torch.float64), 1e3)
    # a very wide Gaussian puts ~half its mass on each open end bin and ~bin width / (std
    # sqrt(2 pi)) in an inner one
    assert float(wide[0].exp()) == pytest.approx(0.5, abs=1e-3)
    assert float(wide[2].exp()) == pytest.approx(2 / 255 / (1e3 * math.sqrt(2 * math.pi)),
                                                 rel=1e-3)
