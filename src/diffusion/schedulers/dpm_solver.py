"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for
Diffusion Probabilistic Model Sampling in Around 10 Steps"; "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models").

The solvers integrate the linear part of the diffusion ODE exactly in log-SNR time lambda =
log(alpha_t / sigma_t) = -log(sigma) and approximate the model's output by a polynomial in
lambda through the last ``solver_order`` outputs (an exponential Adams-Bashforth method):
one model evaluation per step (NFE = steps), of order 1 (DDIM), 2 or 3. ``dpmsolver++``
extrapolates the x_0 prediction, ``dpmsolver`` the epsilon prediction, and
``sde-dpmsolver++`` is DPM-Solver++ for the reverse SDE (Lu et al. 2022b, appendix), which
adds fresh noise each step. x stays the variance-preserving x_t (no input scaling).

Agreement with diffusers' ``DPMSolverMultistepScheduler`` (same settings): same
timesteps, sigmas, warm-up (lower orders until enough outputs exist), lower-order final
steps, coefficients and noise draws; sigmas and coefficients in float64 (diffusers casts x
to float32 and applies its coefficients there). Differences:

* Third order (``solver_order=3``): diffusers' D2 = (D1_0 - D1_1) / (r0 + r1) estimates
  h^2 x'' / 2 but its coefficient, phi_3 = (e^-h - 1 + h) / h^2 - 1/2, belongs to h^2 x''
  (the Taylor term x'' u^2 / 2 integrates to -h^2 phi_3 x''), so the quadratic term is
  halved and the step is not exact for an output quadratic in lambda, as a third-order
  step must be. Here D2 is twice that: along Karras sigmas with a Gaussian's exact model,
  doubling the steps divides our error by ~8.5 and diffusers' by ~3 (second order). (With
  timesteps even in t the last steps stay long in lambda, neither is in its asymptotic
  regime, and the halved term is sometimes the smaller error.) For ``sde-dpmsolver++``
  diffusers' D2 weight, alpha_t ((1 - e^-2h - 2h) / (2h)^2 - 1/2), also has the wrong sign
  on its 1/2 (the integral gives + 1/2): about -alpha_t where it should be O(h), so each
  step is off by O(h^2), a first-order method.
* ``final_sigmas_type="zero"`` with ``dpmsolver``: diffusers refuses it (its formula gives
  0 * inf); the last step here takes its finite limit, the x_0 prediction.
* A step between equal sigmas (Karras sigmas end on sigma_min, so with
  ``final_sigmas_type="sigma_min"`` the last step goes from sigma_min to sigma_min) leaves
  x unchanged; diffusers' ``heun`` and third-order updates divide 0 by 0 there (NaN).
* Karras timesteps are rounded for every schedule; for the cosine schedule diffusers keeps
  them fractional and then truncates them to int64, so its model is told floor(t).
* Calls are counted, not looked up by timestep. diffusers looks the first timestep up and
  takes the second match when it repeats, as Karras sigmas on the cosine schedule make it
  do (998, 998, 998, ...): it skips the first sigma and runs past its table (IndexError).
* A step to sigma = 0 draws no noise (its weight is 0).
* ``clip_sample`` clips the x_0 prediction (for ``dpmsolver``, epsilon is re-derived
  from the clipped x_0, as diffusers does when thresholding); ``thresholding`` as diffusers.

Not implemented: ``lambda_min_clipped``, ``euler_at_final``, ``sde-dpmsolver``, Lu lambdas and
exponential or beta sigmas, learned variances and flow prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffusion.checks import check_choice
from diffusion.schedulers.base import NoiseScheduler, SchedulerOutput
from diffusion.schedulers.options import custom_timesteps, one_of
from diffusion.schedulers.sigmas import SigmaScheduler, karras_sigmas, sigma_to_t

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def _alpha_sigma(sigma: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) of x_t = alpha_t x_0 + sigma_t eps for noise-to-signal ``sigma``."""
    alpha = 1.0 / math.sqrt(1.0 + sigma**2)
    return alpha, sigma * alpha


class DPMSolverMultistepScheduler(SigmaScheduler):
    """Multistep DPM-Solver(++); arguments as in diffusers.

    ``solver_order`` 1-3 (2 recommended for guided sampling, 3 for unconditional);
    ``algorithm_type`` as in the module docstring; ``solver_type`` (second order only):
    ``midpoint`` or ``heun`` approximation of the linear term; ``lower_order_final``: with
    fewer than 15 steps, the last steps use orders 1 and 2 (more stable);
    ``final_sigmas_type``: the last step lands on sigma 0 (``zero``, a first-order step) or
    on the smallest training sigma (``sigma_min``); ``use_karras_sigmas``: n Karras sigmas
    spanning the whole training range, timesteps rounded, instead of ``timestep_spacing``.
    """

    init_noise_sigma = 1.0  # x stays variance preserving
    add_noise = NoiseScheduler.add_noise  # x_t itself, as diffusers' DPM-Solver

    def __init__(self, *, solver_order: int = 2, algorithm_type: str = "dpmsolver++",
                 solver_type: str = "midpoint", lower_order_final: bool = True,
                 final_sigmas_type: str = "zero", use_karras_sigmas: bool = False,
                 **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names)."""
        super().__init__(**process)
        check_choice("solver_order", solver_order, (1, 2, 3))
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        self.solver_order = solver_order
        self.algorithm_type = algorithm_type
        self.solver_type = solver_type
        self.lower_order_final = self._check_flag("lower_order_final", lower_order_final)
        self.final_sigmas_type = final_sigmas_type
        self.use_karras_sigmas = self._check_flag("use_karras_sigmas", use_karras_sigmas)
        self._config.update(solver_order=solver_order, algorithm_type=algorithm_type,
                            solver_type=solver_type, lower_order_final=lower_order_final,
                            final_sigmas_type=final_sigmas_type,
                            use_karras_sigmas=use_karras_sigmas)
        self._outputs: list[torch.Tensor] = []  # converted model outputs, oldest first

    @property
    def stochastic(self) -> bool:
        return self.algorithm_type == "sde-dpmsolver++"

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """x_t itself: DPM-Solver works on the variance-preserving x_t."""
        return sample

    # -------------------------------------------------------------- timesteps
    def _dpm_timesteps(self, n: int) -> list[int]:
        """diffusers' DPM-Solver spacing: ``linspace`` and ``leading`` place n + 1 points
        from 0 and drop the 0; ``trailing`` is the shared one."""
        T = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            step = (T - 1) / n
            return [T - 1] + [round(i * step) for i in range(n - 1, 0, -1)]
        if self.timestep_spacing == "leading":
            steps = [i * (T // (n + 1)) + self.steps_offset for i in range(n, 0, -1)]
            if steps[0] >= T:
                raise ValueError(f"steps_offset={self.steps_offset} pushes the first of {n} "
                                 f"leading timesteps past num_train_timesteps - 1 = {T - 1}.")
            return steps
        return [round(t) for t in self._spaced_timesteps(n)]

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None):
        """Tables for ``num_inference_steps`` steps, or for the custom descending integer
        ``timesteps``: int64 timesteps on ``device``, their sigmas and the final sigma;
        clears the history of model outputs."""
        one_of("num_inference_steps", num_inference_steps, "timesteps", timesteps)
        train = self.train_sigmas.numpy()
        if timesteps is not None:
            if self.use_karras_sigmas:
                raise ValueError("custom timesteps and use_karras_sigmas=True exclude each "
                                 "other (Karras sigmas place their own timesteps).")
            timesteps = np.array(custom_timesteps(timesteps, self.num_train_timesteps))
            n = len(timesteps)
            sigmas = train[timesteps]
        elif self.use_karras_sigmas:
            n = self._check_num_steps(num_inference_steps)
            sigmas = karras_sigmas(float(train[0]), float(train[-1]), n)
            timesteps = np.round(sigma_to_t(sigmas, train))
        else:
            n = self._check_num_steps(num_inference_steps)
            timesteps = np.array(self._dpm_timesteps(n))
            sigmas = train[timesteps]
        final = float(train[0]) if self.final_sigmas_type == "sigma_min" else 0.0
        if np.any(np.diff(sigmas) >= 0):
            raise ValueError(
                f"{self.timestep_spacing} spacing with {n} steps visits some timestep twice, "
                f"which a multistep solver cannot step over; use fewer than {n} steps."
            )
        self._set_tables([*sigmas, final], timesteps, n, device, torch.long)
        self._outputs = []

    # ------------------------------------------------------------------- step
    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float):
        """(x_0 prediction, what the solver extrapolates: x_0 or, for ``dpmsolver``, eps)."""
        alpha, sigma_t = _alpha_sigma(sigma)
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = alpha * sample - sigma_t * model_output
        x0 = self._clip(x0)
        if self.algorithm_type != "dpmsolver":
            return x0, x0
        altered = self.clip_sample or self.thresholding  # epsilon is then re-derived
        if self.prediction_type == "epsilon" and not altered:
            return x0, model_output
        if self.prediction_type == "v_prediction" and not altered:
            return x0, alpha * model_output + sigma_t * sample
        return x0, (sample - alpha * x0) / sigma_t

    def _coefficients(self, order: int, i: int) -> tuple[float, list[float], float]:
        """(weight of x, weights of the newest ``order`` outputs, noise std) of call i."""
        s0, s = self._sigma[i], self._sigma[i + 1]
        alpha_t, sigma_t = _alpha_sigma(s)
        alpha_s, sigma_s = _alpha_sigma(s0)
        rho = s / s0  # e^-h, h = lambda_t - lambda_s0
        sde = self.algorithm_type == "sde-dpmsolver++"
        noise = sigma_t * math.sqrt(max(1.0 - rho**2, 0.0)) if sde else 0.0
        if self.algorithm_type == "dpmsolver":
            x_coef = alpha_t / alpha_s
        else:
            x_coef = sigma_t / sigma_s * (rho if sde else 1.0)
        if s >= s0:  # a step of length 0 (Karras sigmas end on sigma_min, up to rounding)
            return 1.0, [0.0] * order, 0.0
        if order == 1:  # written without h, finite for s = 0
            if self.algorithm_type == "dpmsolver":
                return x_coef, [sigma_t - alpha_t * s0], noise
            return x_coef, [alpha_t * (1.0 - (rho**2 if sde else rho))], noise
        h = math.log(s0 / s)
        if self.algorithm_type == "dpmsolver":
            e = math.expm1(h)
            b0, b1 = -sigma_t * e, -sigma_t * (e / h - 1.0)
            b2 = -sigma_t * ((e - h) / h**2 - 0.5)
        elif sde:
            e = math.expm1(-2.0 * h)
            b0, b1 = -alpha_t * e, alpha_t * (e / (2.0 * h) + 1.0)
            b2 = alpha_t * ((-e - 2.0 * h) / (2.0 * h) ** 2 + 0.5)
        else:
            e = math.expm1(-h)
            b0, b1 = -alpha_t * e, alpha_t * (e / h + 1.0)
            b2 = -alpha_t * ((e + h) / h**2 - 0.5)
        if order == 2 and self.solver_type == "midpoint":
            b1 = 0.5 * b0
        r0 = math.log(self._sigma[i - 1] / s0) / h
        if order == 2:  # D1 = (m0 - m1) / r0
            return x_coef, [b0 + b1 / r0, -b1 / r0], noise
        r1 = math.log(self._sigma[i - 2] / self._sigma[i - 1]) / h
        # D1_j = (m_j - m_j+1) / r_j; D1 = D1_0 + r0 (D1_0 - D1_1) / (r0 + r1) ~ h x';
        # D2 = 2 (D1_0 - D1_1) / (r0 + r1) ~ h^2 x''
        c0 = b1 * (1.0 + r0 / (r0 + r1)) + 2.0 * b2 / (r0 + r1)
        c1 = -b1 * r0 / (r0 + r1) - 2.0 * b2 / (r0 + r1)
        return x_coef, [b0 + c0 / r0, -c0 / r0 + c1 / r1, -c1 / r1], noise

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | None = None, *,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """One multistep update from the current sigma to the next. Noise (``sde-dpmsolver++``
        only) is drawn from ``generator``."""
        i = self._current(timestep)
        n = len(self._timestep_values)
        x0, output = self._convert(model_output, sample, self._sigma[i])
        self._outputs = [*self._outputs, output][-self.solver_order:]
        order = len(self._outputs)  # lower orders while warming up
        few = self.lower_order_final and n < 15
        if i == n - 1 and (few or self.final_sigmas_type == "zero"):
            order = 1
        elif i == n - 2 and few:
            order = min(order, 2)
        x_coef, coefs, noise = self._coefficients(order, i)
        prev_sample = x_coef * sample
        for coef, past in zip(coefs, reversed(self._outputs), strict=False):
            prev_sample = prev_sample + coef * past
        if noise > 0:
            prev_sample = prev_sample + noise * self._randn(sample, generator)
        self._step_index += 1
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)


NoiseScheduler.register("dpmpp_2m", DPMSolverMultistepScheduler, solver_order=2,
                        algorithm_type="dpmsolver++")
NoiseScheduler.register("dpmpp_3m", DPMSolverMultistepScheduler, solver_order=3,
                        algorithm_type="dpmsolver++")
NoiseScheduler.register("dpmpp_2m_sde", DPMSolverMultistepScheduler, solver_order=2,
                        algorithm_type="sde-dpmsolver++")
