"""What the samplers on a table of noise levels share: DPM-Solver, Euler and Heun.

They measure noise by sigma = sqrt((1 - a_t) / a_t), the noise-to-signal ratio of the
training process, and Euler and Heun work in sigma space, x = x_t / sqrt(a_t) =
x_0 + sigma * eps, the variance-exploding form of Karras et al. 2022 ("Elucidating the
Design Space of Diffusion-Based Generative Models"). The network still sees the
variance-preserving x_t it was trained on: ``scale_model_input`` divides by
sqrt(sigma^2 + 1).

``set_timesteps`` builds two tables: ``sigmas`` (CPU float64, one entry per call of
``step`` plus the final sigma) and ``timesteps`` (what the model is told, on the
requested device). ``step`` reads them by a Python counter, never by looking the
timestep up, so a sampling loop on an accelerator never waits on the device; the
timestep passed in is only checked where that is free (a Python number or a CPU tensor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from diffusion.checks import check_int
from diffusion.schedulers.base import NoiseScheduler
from diffusion.schedulers.options import custom_sigmas, one_of

Tensor = torch.Tensor


def training_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """sigma(t) for t = 0 .. T-1, float64. A zero-terminal-SNR a = 0 counts as 2**-24, as
    in diffusers, so that the largest sigma stays finite (4096)."""
    a = torch.where(alphas_cumprod > 0, alphas_cumprod, 2.0**-24)
    return ((1.0 - a) / a).sqrt()


def sigma_to_t(sigmas: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The fractional timestep of each sigma: linear in log sigma between training steps,
    clamped to [0, T - 1] (diffusers' ``_sigma_to_t``)."""
    log_train = np.log(train_sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    low = np.clip(np.searchsorted(log_train, log_sigma, side="right") - 1, 0, len(log_train) - 2)
    w = np.clip((log_train[low] - log_sigma) / (log_train[low] - log_train[low + 1]), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho) (Karras et
    al. 2022, eq. 5, rho = 7)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class SigmaScheduler(NoiseScheduler):
    """Base of the samplers on a sigma table (see the module docstring); not a sampler itself.

    Defaults as diffusers' samplers of this kind: ``linspace`` spacing and no clipping
    (``over`` carries a training scheduler's own ``clip_sample`` and spacing). With
    ``clip_sample`` the x_0 prediction is clipped to +-clip_sample_range before it is used.
    """

    def __init__(self, *, timestep_spacing: str = "linspace", clip_sample: bool = False,
                 **process: Any):
        """``process``: the noise-process arguments of ``NoiseScheduler`` (diffusers' names)."""
        super().__init__(timestep_spacing=timestep_spacing, clip_sample=clip_sample, **process)
        self.train_sigmas = training_sigmas(self.alphas_cumprod)
        self.sigmas = torch.cat([self.train_sigmas.flip(0), self.train_sigmas.new_zeros(1)])
        self._sigma: list[float] = []  # the sigmas table as Python floats, read by step
        self._timestep_values: list[float] = []  # timesteps as the model sees them
        self._step_index: int | None = None
        self._placed = False

    @staticmethod
    def _check_flag(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}.")
        return value

    # ------------------------------------------------------------------- tables
    def _sigma_schedule(self, num_inference_steps, timesteps=None, sigmas=None,
                        karras: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas and the final one) of a run, as diffusers' Euler and Heun place
        them, from one of: ``num_inference_steps``, custom ``timesteps`` or custom ``sigmas``.

        The timesteps of ``timestep_spacing`` (``linspace`` unrounded) or the custom ones,
        rounded to float32 as the model sees them, and sigma interpolated linearly there;
        with ``karras``, n Karras sigmas between the first and the last of those instead,
        each with its fractional timestep. Custom ``sigmas`` list every step's sigma and the
        one the last step lands on; their timesteps are interpolated in log sigma.
        """
        train = self.train_sigmas.numpy()
        if sigmas is not None:
            one_of("num_inference_steps", num_inference_steps, "timesteps", timesteps,
                   "sigmas", sigmas)
            table = np.array(custom_sigmas(sigmas))
            return sigma_to_t(table[:-1], train), table
        if timesteps is not None and karras:
            raise ValueError("custom timesteps and use_karras_sigmas=True exclude each other "
                             "(Karras sigmas place their own timesteps); pass sigmas= instead.")
        steps = self._requested_timesteps(num_inference_steps, timesteps, integer=False)
        steps = np.array(steps, dtype=np.float32).astype(np.float64)
        table = np.interp(steps, np.arange(len(train)), train)
        if karras:
            table = karras_sigmas(float(table[-1]), float(table[0]), len(steps))
            steps = sigma_to_t(table, train)
        return steps, np.append(table, 0.0)

    def _set_tables(self, sigmas, timesteps, num_inference_steps: int, device,
                    dtype: torch.dtype) -> None:
        """Install one sampling run: ``sigmas`` has one entry more than ``timesteps``."""
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.tensor(np.asarray(sigmas, dtype=np.float64))
        self._sigma = self.sigmas.tolist()
        as_seen = torch.tensor(np.asarray(timesteps, dtype=np.float64)).to(dtype)
        self._timestep_values = as_seen.tolist()
        self.timesteps = as_seen.to(device)
        self._step_index = 0
        self._placed = False  # whether the run's first call is placed (see _current)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start this run at call ``begin_index`` of ``timesteps`` instead of the first
        (diffusers' name; image-to-image starts part-way down the schedule). Call it after
        ``set_timesteps``; the next ``step`` is then call ``begin_index``."""
        if self._step_index is None:
            raise ValueError(f"call set_timesteps(n) before set_begin_index on "
                             f"{type(self).__name__}.")
        calls = len(self._timestep_values)
        check_int("begin_index", begin_index, 0, calls - 1)
        self._step_index = begin_index
        self._placed = True

    @property
    def step_index(self) -> int | None:
        """How many calls of ``step`` this run has made (None before ``set_timesteps``)."""
        return self._step_index

    def _look_up(self, timestep) -> int | None:
        """The call of this run at ``timestep`` (an element of ``timesteps`` or its value;
        of two equal entries the second, where a whole step of Heun begins, as diffusers'
        ``index_for_timestep``); None when no entry has that value."""
        if torch.is_tensor(timestep):
            position = self._position_in_timesteps(timestep)
            if position is not None:
                return position
            timestep = timestep.item()  # read once per run, at its first call
        hits = [j for j, t in enumerate(self._timestep_values)
                if abs(float(timestep) - t) <= 1e-4 * max(1.0, abs(t))]
        return hits[1] if len(hits) > 1 else hits[0] if hits else None

    def _current(self, timestep) -> int:
        """The index of the call about to be made, checked against ``timestep`` where free.

        The first call of a run is placed by its timestep, as diffusers does: a loop over a
        tail of ``timesteps`` (image-to-image without ``set_begin_index``) starts there.
        Later calls are counted, so a loop on an accelerator never waits on the device."""
        i = self._step_index
        if i is None:
            raise ValueError(f"call set_timesteps(n) before sampling with {type(self).__name__}.")
        if not self._placed and timestep is not None:
            self._placed = True
            j = self._look_up(timestep)
            if j is not None and self._timestep_values[j] != self._timestep_values[i]:
                self._step_index = i = j
        if i >= len(self._timestep_values):
            raise ValueError(f"all {len(self._timestep_values)} steps of this run are done; "
                             "call set_timesteps(n) to sample again.")
        if torch.is_tensor(timestep):
            if timestep.device.type != "cpu" or timestep.numel() != 1:
                # reading a device tensor would make the host wait for it; an element of
                # timesteps is checked by its position instead
                position = self._position_in_timesteps(timestep)
                if position is not None and position != i:
                    raise ValueError(
                        f"call {i} of this run is at timesteps[{i}], not timesteps[{position}]: "
                        "pass the entries of scheduler.timesteps in order, each to "
                        "scale_model_input and step.")
                return i
            timestep = timestep.item()
        expected = self._timestep_values[i]
        if timestep is not None and abs(float(timestep) - expected) > 1e-4 * max(1.0, expected):
            raise ValueError(
                f"call {i} of this run is at timestep {expected:g}, not {timestep}: pass the "
                "entries of scheduler.timesteps in order, each to scale_model_input and step."
            )
        return i

    # --------------------------------------------------------------- sigma space
    @property
    def init_noise_sigma(self) -> Tensor:
        """x_T = init_noise_sigma * N(0, I) in sigma space, by diffusers' rule: the largest
        sigma for ``linspace`` and ``trailing`` spacing, sqrt(sigma^2 + 1) for ``leading``.
        A 0-d CPU float64 tensor, as diffusers' (a tensor; multiplying a sample on any
        device by it waits on nothing).

        sqrt(sigma_max^2 + 1) is exactly the spread of x_T / sqrt(a_T) for x_T ~ N(0, I); the
        largest sigma alone (k-diffusion's convention) is smaller by a relative
        1 / (2 sigma_max^2): 2e-5 for the linear schedule at T = 1000.
        """
        sigma_max = float(self.sigmas.max())
        if self.timestep_spacing not in ("linspace", "trailing"):
            sigma_max = math.sqrt(sigma_max**2 + 1.0)
        return torch.tensor(sigma_max, dtype=torch.float64)

    def add_noise(self, original_samples: Tensor, noise: Tensor,
                  timesteps: float | Tensor) -> Tensor:
        """x_0 + sigma(t) noise: the sampler's own variable at ``timesteps`` (one, or one per
        sample), as diffusers' Euler and Heun. sigma(t) is this run's sigma where t is one of
        its timesteps (fractional ones included), else the training sigma interpolated
        linearly in t. The training process's x_t is this divided by sqrt(sigma^2 + 1)
        (``scale_model_input``); DPM-Solver, which works on x_t, returns that instead."""
        sigma = self._sigmas_at(timesteps).to(original_samples.device)
        sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return original_samples + sigma.to(original_samples.dtype) * noise

    def _sigmas_at(self, timesteps: float | Tensor) -> Tensor:
        """sigma(t) in float64 for each of ``timesteps`` (see ``add_noise``)."""
        values = timesteps.detach().cpu().double().flatten().tolist() \
            if torch.is_tensor(timesteps) else [float(timesteps)]
        T = self.num_train_timesteps
        train = self.train_sigmas.numpy()
        table = dict(zip(self._timestep_values, self._sigma, strict=False))
        out = []
        for t in values:
            if not 0 <= t <= T - 1:
                raise ValueError(f"timesteps must be in [0, {T - 1}]; got {t:g}.")
            out.append(table.get(t, float(np.interp(t, np.arange(T), train))))
        return torch.tensor(out, dtype=torch.float64)

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network's input x_t = x / sqrt(sigma^2 + 1) at the current call's sigma."""
        return sample / math.sqrt(self._sigma[self._current(timestep)] ** 2 + 1.0)

    def _denoised(self, model_output: Tensor, sample: Tensor, sigma: float) -> Tensor:
        """x_0 implied by ``model_output`` at the sigma-space x = ``sample`` (clipped when
        ``clip_sample``): x - sigma eps, the output itself, or, with v = sqrt(a) eps -
        sqrt(1 - a) x_0 and x_t = sqrt(a) x, x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v."""
        if self.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = sample / (sigma**2 + 1.0) - (sigma / math.sqrt(sigma**2 + 1.0)) * model_output
        return self._clip(x0)
