"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, section 4.3 and
appendix D.2; their ``likelihood.py``).

The ODE dx/dt = f(t) x - g(t)^2 score(x, t) / 2 moves x_0 to x_1 deterministically, and the
instantaneous change of variables gives

    log p_0(x_0) = log p_1(x_1) + int_{t_min}^{1} div_x [f x - g^2 score / 2] dt,

with p_1 the process's Gaussian prior. The divergence is the trace of the drift's Jacobian:
exact (``trace="exact"``: one vector-Jacobian product per dimension, for small data and the
tests) or the unbiased Hutchinson-Skilling estimate z^T J z with one Rademacher (or Gaussian)
z per sample, fixed along the path (``trace="hutchinson"``). The ODE is solved with scipy's
adaptive RK45 (``solve_ivp``) at ``rtol``/``atol`` as in the paper (1e-5); the model
evaluations are counted (``nfe``).

Bits per dimension for 8-bit images scaled to [-1, 1] with uniform dequantisation (x = (2 (k +
u) / 256 - 1), u ~ U[0, 1)): -log p(x) / (D ln 2) + 7, the 7 being log2 of the 128x scaling of
[0, 256) onto [-1, 1) (``bits_per_dim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffusion.checks import check_choice
from diffusion.processes.base import Process
from diffusion.processes.flow import EpsFn, flow_drift

Tensor = torch.Tensor


@dataclass
class Likelihood:
    """Per-sample log p(x_0) in nats (float64), the prior's share, and the model evaluations
    the solver made."""

    logp: Tensor
    prior_logp: Tensor
    nfe: int


def ode_likelihood(process: Process, eps_fn: EpsFn, x0: Tensor, *, trace: str = "hutchinson",
                   noise: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None) -> Likelihood:
    """log p(x0) of each sample under the model whose epsilon is ``eps_fn``; see the module
    docstring. ``x0`` (B, ...) is integrated in float64 on its device."""
    check_choice("trace", trace, ("hutchinson", "exact"))
    check_choice("noise", noise, ("rademacher", "gaussian"))
    shape, batch = x0.shape, x0.shape[0]
    dim = x0[0].numel()
    device = x0.device
    z = None
    if trace == "hutchinson":
        z = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
        if noise == "rademacher":
            z = z.sign()
    nfe = 0

    def drift(x: Tensor, t: float) -> Tensor:
        return flow_drift(process, eps_fn(x, t), x, t)

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        x = torch.from_numpy(state[: batch * dim]).to(device).reshape(shape)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            dx = drift(x, t)
            nfe += 1
            if z is not None:
                (grad,) = torch.autograd.grad(dx, x, z)
                div = (grad * z).flatten(1).sum(1)
            else:
                div = torch.zeros(batch, dtype=torch.float64, device=device)
                flat = dx.flatten(1)
                for i in range(dim):
                    (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dim - 1)
                    div = div + grad.flatten(1)[:, i]
        return np.concatenate([dx.detach().flatten().cpu().numpy(),
                               div.detach().cpu().numpy()])

    start = np.concatenate([x0.detach().double().flatten().cpu().numpy(), np.zeros(batch)])
    solution = solve_ivp(rhs, (process.t_min, process.t_max), start, rtol=rtol, atol=atol,
                         method="RK45")
    if not solution.success:
        raise RuntimeError(f"the probability-flow ODE solver failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1])
    x1 = end[: batch * dim].reshape(shape)
    prior = process.prior_logp(x1)
    return Likelihood(logp=prior + end[batch * dim:], prior_logp=prior, nfe=nfe)


def bits_per_dim(logp: Tensor, dim: int) -> Tensor:
    """Bits per dimension of 8-bit data in [-1, 1] (dequantised uniformly) from log p in nats."""
    return -logp / (dim * math.log(2)) + 7.0


def dequantize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Images in [-1, 1] on the 256-level grid ((2 k + 1) / 256 - 1 or 2 k / 255 - 1 alike)
    moved to uniform points of their bins: x = 2 (k + u) / 256 - 1, u ~ U[0, 1)."""
    levels = torch.round((images.double() + 1) * 127.5).clamp(0, 255)
    u = torch.rand(images.shape, generator=generator, dtype=torch.float64).to(images.device)
    return 2 * (levels + u) / 256 - 1
