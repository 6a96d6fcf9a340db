"""Exact likelihoods through the probability-flow ODE, checked where the answer is known:
Gaussian data and the exact-score harness's Gaussian mixtures, whose noised densities are
closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.metrics.likelihood import bits_per_dim, dequantize, ode_likelihood
from diffusion.oracle.mixtures import ring
from diffusion.processes import CosineVPProcess, SubVPProcess, VEProcess, VPProcess
from diffusion.processes.flow import integrate_flow


def _gaussian_eps(process, c: float):
    def eps(x, t):
        var = process.alpha(t) ** 2 * c**2 + process.sigma(t) ** 2
        return process.sigma(t) * x / var
    return eps


@pytest.mark.parametrize("process", [VPProcess(), SubVPProcess(), VEProcess(sigma_max=30.0),
                                     CosineVPProcess()], ids=["vp", "subvp", "ve", "vp-cosine"])
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_gaussian_data_log_density_is_recovered(process, trace):
    """Data N(0, c^2 I): p_t = N(0, (alpha^2 c^2 + sigma^2) I) in closed form; the ODE from
    t_min gives log p_{t_min} (Rademacher Hutchinson is exact here: the Jacobian is a multiple
    of the identity)."""
    c, dim = 0.4, 3
    x0 = torch.randn(6, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * c
    result = ode_likelihood(process, _gaussian_eps(process, c), x0, trace=trace,
                            generator=torch.Generator().manual_seed(1))
    var = float(process.alpha(process.t_min) ** 2 * c**2 + process.sigma(process.t_min) ** 2)
    truth = -0.5 * dim * math.log(2 * math.pi * var) - (x0**2).sum(1) / (2 * var)
    torch.testing.assert_close(result.logp, truth, rtol=0, atol=2e-3)
    assert result.nfe > 10


def test_mixture_log_density_within_a_hundredth_of_a_bit():
    """The ring of 8 modes (std 0.05) with its exact epsilon: the ODE likelihood at t_min
    equals the noised mixture's log density there to 0.01 bits/dim."""
    process = VPProcess()
    mixture = ring()
    x0 = mixture.sample(8, torch.Generator().manual_seed(2))

    def eps(x, t):
        a, _ = process.normalised(t)
        return mixture.eps(x * process.c_in(t), a**2)

    result = ode_likelihood(process, eps, x0, trace="exact")
    a, _ = process.normalised(process.t_min)
    truth = mixture.log_prob(x0 * process.c_in(process.t_min), a**2) \
        + 2 * torch.log(process.c_in(process.t_min))
    error_bits = (result.logp - truth).abs() / (2 * math.log(2))
    assert float(error_bits.max()) < 0.01, error_bits


def test_bits_per_dim_and_dequantisation():
    images = torch.tensor([[-1.0, 1.0, 2 * 100 / 255 - 1]])
    deq = dequantize(images, torch.Generator().manual_seed(0))
    levels = torch.tensor([[0.0, 255.0, 100.0]])
    assert bool(((deq + 1) * 128 >= levels).all() and ((deq + 1) * 128 < levels + 1).all())
    # a uniform density on [-1, 1]^D is 1/2^D: log p = -D ln 2, 1 bit below the 8 of a pixel
    dim = 4
    assert float(bits_per_dim(torch.tensor(-dim * math.log(2)), dim)) == pytest.approx(8.0)


@pytest.mark.parametrize("process", [VPProcess(), VEProcess(sigma_max=30.0)], ids=["vp", "ve"])
def test_the_adaptive_flow_sampler_follows_the_exact_flow(process):
    """With the exact epsilon of N(0, c^2 I) the flow is linear: x(t) = x(1) sqrt(var(t) /
    var(1)); RK45 at rtol = atol = 1e-6 lands there, with tens of evaluations, not thousands."""
    c = 0.4
    x1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x1 = x1 * process.prior_std
    end, nfe = integrate_flow(process, _gaussian_eps(process, c), x1, 1.0, process.t_min,
                              rtol=1e-6, atol=1e-6)
    var = lambda t: float(process.alpha(t) ** 2 * c**2 + process.sigma(t) ** 2)  # noqa: E731
    torch.testing.assert_close(end, x1 * (var(process.t_min) / var(1.0)) ** 0.5,
                               rtol=1e-4, atol=1e-5)
    assert 10 < nfe < 500
    with pytest.raises(ValueError, match="method must be one of"):
        integrate_flow(process, _gaussian_eps(process, c), x1, 1.0, 0.5, method="euler")
