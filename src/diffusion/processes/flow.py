"""The probability-flow ODE of a process (Song et al. 2021, section 4.3),

    dx/dt = f(t) x - g(t)^2 score(x, t) / 2,   score = -eps(x, t) / sigma(t),

which moves samples of p_t to samples of p_s deterministically. ``flow_drift`` is its right
side; ``integrate_flow`` solves it with an adaptive Runge-Kutta method (scipy's ``solve_ivp``,
RK45 by default, as Song et al.'s sampler and likelihood do), counting model evaluations: the
adaptive sampler of the score-SDE chapter, and the path the exact likelihood follows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffusion.checks import check_choice, check_number
from diffusion.processes.base import Process

Tensor = torch.Tensor
EpsFn = Callable[[Tensor, float], Tensor]
"""(x_t, t) -> the epsilon that the network's output implies at x_t (``Process.pred_x0_eps``)."""
METHODS = ("RK45", "RK23", "DOP853")


def flow_drift(process: Process, eps: Tensor, x: Tensor, t: float) -> Tensor:
    """dx/dt of the probability-flow ODE at x_t = ``x`` with the network's epsilon ``eps``."""
    f, g2 = (float(v) for v in process.sde(t))
    return f * x + 0.5 * g2 / float(process.sigma(t)) * eps


def integrate_flow(process: Process, eps_fn: EpsFn, x: Tensor, t_start: float, t_end: float,
                   *, rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45"
                   ) -> tuple[Tensor, int]:
    """(x at ``t_end``, model evaluations) from x at ``t_start`` along the probability-flow
    ODE, solved in float64 by scipy's adaptive ``method`` to ``rtol``/``atol``."""
    check_choice("method", method, METHODS)
    check_number("rtol", rtol, above=0)
    check_number("atol", atol, above=0)
    shape, device, dtype = x.shape, x.device, x.dtype
    nfe = 0

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        current = torch.from_numpy(state).to(device).reshape(shape)
        with torch.no_grad():
            eps = eps_fn(current.to(dtype), t).double()
        nfe += 1
        return flow_drift(process, eps, current, t).flatten().cpu().numpy()

    solution = solve_ivp(rhs, (t_start, t_end), x.detach().double().flatten().cpu().numpy(),
                         rtol=rtol, atol=atol, method=method)
    if not solution.success:
        raise RuntimeError(f"the probability-flow ODE solver failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
    return end, nfe
