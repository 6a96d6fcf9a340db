"""Flow-matching samplers: the ODE dx/dt = u(x, t) from t = 1 to 0, over any ``Process``.

u is the velocity the network's estimates of x_0 and eps imply, alpha'(t) x_0 + sigma'(t) eps
(``Process.velocity``): for a flow-matching model (``FlowProcess``, ``prediction_type=
"flow_prediction"``) the network's own output, eps - x_0; for every other process the same
probability-flow ODE in that process's time. The grid is diffusers' FlowMatch schedulers': n
times evenly spaced from 1 to 1 / T (T = the process's ``model_steps``; no lower than its
t_min), each moved by the time shift t' = shift t / (1 + (shift - 1) t) (Esser et al. 2024,
section 5.3.2: shift > 1 spends more steps at high noise, for larger images), then t = 0.
On that grid the last step runs from 1 / T to 0, where the flow barely moves: with 2 steps
the second is all but wasted. ``spacing="trailing"`` takes n equal steps from 1 to t_min (1,
1 - 1/n, ..., 1/n, then 0; Liu et al.'s few-step grid), every one of them useful.
``spacing="logsnr"`` spaces the n times evenly in lambda = log(alpha / sigma) instead, from
t = 1 - 1/T to the end, the first then moved to t = 1 (DPM-Solver's spacing for small images:
on N(0, 0.25) data its 2M's error at 10 steps falls from 0.36 to 0.038, Euler's rises).
``method``:

* ``euler``: x + (t' - t) u(x, t): n evaluations (diffusers' ``FlowMatchEulerDiscreteScheduler``);
* ``heun``: Heun's method, the last step (to t = 0) an Euler step: 2 n - 1 evaluations
  (diffusers' ``FlowMatchHeunDiscreteScheduler``);
* ``midpoint``: u at the step's midpoint in time: 2 n evaluations;
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022b) in the process's own lambda(t) =
  log(alpha / sigma), on the network's x_0: n evaluations, the first step and the last (to
  sigma = 0) first order, as diffusers' ``DPMSolverMultistepScheduler`` with
  ``final_sigmas_type="zero"``. At a flow process's t = 1, alpha = 0 and lambda = -inf: the
  first step's exact exponential integrator is then x' = sigma' x_1 + alpha' x_0_hat (DDIM's),
  finite, so the solver starts from pure noise, which diffusers' ``use_flow_sigmas`` grid (from
  t = 1 - 1/T) does not; the second step's correction, divided by the first step's infinite
  length, vanishes. It runs every process (``sampler=flow_dpmpp_2m``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_choice, check_int, check_number
from diffusion.processes.base import Process
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.continuous import ContinuousSampler, checked_process, register
from diffusion.schedulers.noise import Generators

Tensor = torch.Tensor
METHODS = ("euler", "heun", "midpoint", "dpmpp_2m")
SPACINGS = ("linear", "trailing", "logsnr")


def shift_times(t: Tensor, shift: float) -> Tensor:
    """The time shift of Esser et al. 2024: shift t / (1 + (shift - 1) t); 1 leaves t."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


class VelocityScheduler(ContinuousSampler, sampler_name="flow_euler"):
    """Euler, Heun, midpoint or DPM-Solver++(2M) steps of dx/dt = u on the shifted grid; see
    the module docstring. ``sampler=flow_euler|flow_heun|flow_midpoint|flow_dpmpp_2m``."""

    stochastic = False
    zero_terminal_snr = True

    def __init__(self, process: Process | None = None, *, method: str = "euler",
                 shift: float = 1.0, spacing: str = "linear"):
        self.process = checked_process(process)
        self.method = check_choice("method", method, METHODS)
        self.shift = check_number("shift", shift, above=0)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.times = torch.empty(0, dtype=torch.float64)
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._calls: list[tuple[str, int, float]] = []
        self._index = 0
        self._pending: tuple[Tensor, Tensor] | None = None
        self._previous: tuple[Tensor, float] | None = None  # dpmpp_2m: last x_0 and its h

    @property
    def config(self) -> dict[str, Any]:
        return {"method": self.method, "shift": self.shift, "spacing": self.spacing}

    @property
    def init_noise_sigma(self) -> float:
        return self._process().prior_std

    def prior(self, z: Tensor) -> Tensor:
        """x at t = 1 from standard normal ``z``: the process's noise (uniform for the
        corrupt-and-denoise baseline) at its prior scale."""
        return self._process().noise_from_normal(z) * self.init_noise_sigma

    def set_timesteps(self, num_inference_steps: int, device: Any = None,
                      times: Tensor | None = None) -> None:
        """n times (or the given decreasing ``times``, before the shift), then t = 0."""
        process = self._process()
        if times is None:
            n = check_int("num_inference_steps", num_inference_steps, 1)
            end = max(process.t_min, 1.0 / process.model_steps)
            times = torch.linspace(1.0, end, n, dtype=torch.float64)
            if self.spacing == "trailing":  # n equal steps from 1 to t_min, then to t = 0
                start = process.t_min
                times = 1.0 - (1.0 - start) * torch.arange(n, dtype=torch.float64) / n
            elif self.spacing == "logsnr" and n > 1:  # even in lambda from 1 - 1/T, then t = 1
                lam = torch.linspace(float(process.log_snr(1.0 - 1.0 / process.model_steps)),
                                     float(process.log_snr(end)), n, dtype=torch.float64)
                times = process.time_of(torch.exp(-lam)).clamp(end, 1.0)
                times[0] = 1.0
        times = shift_times(torch.as_tensor(times, dtype=torch.float64).flatten(), self.shift)
        self.times = torch.cat([times, times.new_zeros(1)])
        self._calls = []
        for i in range(len(times)):
            t, t_next = float(self.times[i]), float(self.times[i + 1])
            self._calls.append(("first", i, t))
            if self.method == "midpoint":
                self._calls.append(("second", i, 0.5 * (t + t_next)))
            elif self.method == "heun" and t_next > 0:
                self._calls.append(("second", i, t_next))
        called = torch.tensor([t for *_, t in self._calls], dtype=torch.float64)
        self.timesteps = process.model_time(called).float().to(device)
        self.num_inference_steps = len(times)
        self._index = 0
        self._pending = None
        self._previous = None

    @property
    def state_positions(self) -> list[int]:
        return [j for j, (kind, *_) in enumerate(self._calls) if kind == "first"] \
            + [len(self._calls)]

    def known_state(self, x0: Tensor, noise: Tensor, k: int) -> Tensor:
        """The k-th state of the chain for the known image ``x0``: x0 noised to times[k]."""
        t = float(self.times[k])
        return x0 if t == 0.0 else self._process().add_noise(x0, noise, t)

    def _call(self) -> tuple[str, int, float]:
        if self._index >= len(self._calls):
            raise ValueError("all steps of this run are done; call set_timesteps(n) to sample "
                             "again.")
        return self._calls[self._index]

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The network's input c_in(t) x at this call's time."""
        _, _, t = self._call()
        return sample * float(self._process().c_in(t))

    def step(self, model_output: Tensor, timestep, sample: Tensor, *,
             generator: Generators = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One evaluation's update: an Euler step, or a Heun / midpoint step's half."""
        kind, i, t = self._call()
        process = self._process()
        x0, eps = process.pred_x0_eps(model_output, sample, t)
        u = process.velocity(x0, eps, t)
        t_start, t_next = float(self.times[i]), float(self.times[i + 1])
        if self.method == "dpmpp_2m":
            prev = self._dpmpp_2m(x0, sample, t_start, t_next)
        elif kind == "second":
            start, u_first = self._pending
            self._pending = None
            slope = u if self.method == "midpoint" else 0.5 * (u_first + u)
            prev = start + (t_next - t_start) * slope
        elif self.method == "midpoint":
            self._pending = (sample, u)
            prev = sample + 0.5 * (t_next - t_start) * u
        elif self.method == "heun" and t_next > 0:
            self._pending = (sample, u)
            prev = sample + (t_next - t_start) * u
        else:
            prev = sample + (t_next - t_start) * u
        self._index += 1
        out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return out if return_dict else tuple(out)

    def _dpmpp_2m(self, x0: Tensor, sample: Tensor, t: float, t_next: float) -> Tensor:
        """One DPM-Solver++(2M) step from t to t_next in lambda = log(alpha / sigma),
        midpoint form: D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h; first order where
        there is no previous step and on the last step to sigma = 0."""
        process = self._process()
        s = float(process.sigma(t))
        a_next, s_next = float(process.alpha(t_next)), float(process.sigma(t_next))
        h = float(process.log_snr(t_next)) - float(process.log_snr(t))  # inf at either end
        d = x0
        if self._previous is not None and s_next > 0:
            x0_prev, h_prev = self._previous
            d = x0 + (0.5 * h / h_prev) * (x0 - x0_prev)  # 1 / (2 r): 0 after an infinite step
        self._previous = (x0, h)
        if s_next == 0:
            return a_next * d
        return (s_next / s) * sample - (a_next * math.expm1(-h)) * d


register("flow_heun", VelocityScheduler, method="heun")
register("flow_midpoint", VelocityScheduler, method="midpoint", spacing="trailing")
register("corrupt", VelocityScheduler, method="euler", spacing="trailing")
register("flow_dpmpp_2m", VelocityScheduler, method="dpmpp_2m", spacing="logsnr")
