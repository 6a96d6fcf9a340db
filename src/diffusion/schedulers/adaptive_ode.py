"""The probability-flow ODE solved by an adaptive Runge-Kutta method (``sampler=rk45``): Song
et al. 2021's ODE sampler (``ode_sampler`` of their code: scipy's ``solve_ivp``, RK45, rtol =
atol = 1e-5, from t = 1 to t_min, then one Tweedie denoising step).

The solver picks its own steps, so the sampler does not list its model calls ahead
(``timesteps``) as the stepping samplers do: the pipeline hands it the network
(``adaptive = True``, ``solve``) and it counts the evaluations it made (``evaluations``, one
entry per batch solved). ``steps`` caps them: a draw that needs more stops with one sentence
saying what to raise (``sampler.steps``, the tolerances). The batch is one ODE system, as in
Song's code, so the error control holds for the batch as a whole and the count is per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from diffusion.checks import check_choice, check_int, check_number
from diffusion.errors import ConfigError
from diffusion.processes.base import Process
from diffusion.processes.flow import METHODS, TooManyEvaluations, integrate_flow
from diffusion.schedulers.continuous import ContinuousSampler, checked_process

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor], Tensor]
"""(the network's input, the 0-d time it is told) -> its float output."""
DENOISE = ("tweedie", "none")


class AdaptiveODESampler(ContinuousSampler, sampler_name="rk45"):
    """The probability-flow ODE from t = 1 to t_min by scipy's ``method`` (RK45, RK23 or
    DOP853) to ``rtol``/``atol``; ``denoise="tweedie"`` ends with one more evaluation at t_min
    returning the network's x_0 (Song's ``denoise=True``), ``"none"`` returns x at t_min."""

    adaptive: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False

    def __init__(self, process: Process | None = None, *, rtol: float = 1e-5,
                 atol: float = 1e-5, method: str = "RK45", denoise: str = "tweedie"):
        self.process = checked_process(process)
        self.rtol = check_number("rtol", rtol, above=0)
        self.atol = check_number("atol", atol, above=0)
        self.method = check_choice("method", method, METHODS)
        self.denoise = check_choice("denoise", denoise, DENOISE)
        self.num_inference_steps: int | None = None
        self.evaluations: list[int] = []

    @property
    def config(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "method": self.method,
                "denoise": self.denoise}

    @property
    def init_noise_sigma(self) -> float:
        return self._process().prior_std

    @property
    def timesteps(self) -> Tensor:
        """Empty: the solver chooses its times as it goes (see ``evaluations``)."""
        return torch.empty(0)

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """The most network evaluations one solve may make (the Tweedie step included)."""
        self.num_inference_steps = check_int("num_inference_steps", num_inference_steps, 2)

    def solve(self, model_fn: ModelFn, x: Tensor, record: int = 0
              ) -> tuple[Tensor, Tensor | None, list[float]]:
        """(x_0, the states at ``record`` times evenly spaced from 1 to t_min or None, those
        times) from ``x`` ~ N(0, prior_std^2 I) (already scaled); the evaluations it made are
        appended to ``evaluations``."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(max evaluations) before solve.")
        process = self._process()
        tweedie = self.denoise == "tweedie"

        def output(current: Tensor, t: float) -> Tensor:
            time = process.model_time(t).to(device=x.device, dtype=torch.float32)
            return model_fn(current * float(process.c_in(t)), time)

        def eps_fn(current: Tensor, t: float) -> Tensor:
            return process.pred_x0_eps(output(current, t), current, t)[1]

        cap = self.num_inference_steps - int(tweedie)
        try:
            solved = integrate_flow(process, eps_fn, x, 1.0, process.t_min, rtol=self.rtol,
                                    atol=self.atol, method=self.method,
                                    max_evaluations=max(cap, 1), record=record)
        except TooManyEvaluations as exc:
            raise ConfigError(f"{exc}: raise sampler.steps (the cap, now "
                              f"{self.num_inference_steps}) or sampler.rtol/atol.") from None
        end, nfe = solved[0], solved[1]
        states = solved[2] if record > 1 else None
        if tweedie:
            end = process.pred_x0_eps(output(end, process.t_min), end, process.t_min)[0]
            nfe += 1
            if states is not None:
                states[:, -1] = end
        self.evaluations.append(nfe)
        times = torch.linspace(1.0, process.t_min, record).tolist() if record > 1 else []
        return end, states, times
