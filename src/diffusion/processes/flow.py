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


class TooManyEvaluations(RuntimeError):
    """The adaptive solver needed more network evaluations than it was allowed."""


def integrate_flow(process: Process, eps_fn: EpsFn, x: Tensor, t_start: float, t_end: float,
                   *, rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
                   max_evaluations: int | None = None, record: int = 0
                   ) -> tuple[Tensor, int] | tuple[Tensor, int, Tensor]:
    """(x at ``t_end``, model evaluations) from x at ``t_start`` along the probability-flow
    ODE, solved in float64 by scipy's adaptive ``method`` to ``rtol``/``atol``.

    ``max_evaluations``: the solver stops with ``TooManyEvaluations`` past that many.
    ``record`` > 1 adds a third value, the states at ``record`` times evenly spaced from
    ``t_start`` to ``t_end`` (both included), (B, record, ...) in x's dtype, read off the
    solver's own interpolant (no extra evaluation)."""
    check_choice("method", method, METHODS)
    check_number("rtol", rtol, above=0)
    check_number("atol", atol, above=0)
    shape, device, dtype = x.shape, x.device, x.dtype
    nfe = 0

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        if max_evaluations is not None and nfe >= max_evaluations:
            raise TooManyEvaluations(
                f"the adaptive ODE solver needed more than {max_evaluations} network "
                f"evaluations at rtol={rtol:g}, atol={atol:g}")
        current = torch.from_numpy(state).to(device).reshape(shape)
        with torch.no_grad():
            eps = eps_fn(current.to(dtype), t).double()
        nfe += 1
        return flow_drift(process, eps, current, t).flatten().cpu().numpy()

    t_eval = np.linspace(t_start, t_end, record) if record > 1 else None
    solution = solve_ivp(rhs, (t_start, t_end), x.detach().double().flatten().cpu().numpy(),
                         rtol=rtol, atol=atol, method=method, t_eval=t_eval)
    if not solution.success:
        raise RuntimeError(f"the probability-flow ODE solver failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
    if t_eval is None:
        return end, nfe
    states = torch.from_numpy(solution.y.T.copy()).reshape(record, *shape).transpose(0, 1)
    return end, nfe, states.to(dtype=dtype)
