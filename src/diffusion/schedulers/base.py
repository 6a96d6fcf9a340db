"""The forward noise process shared by every scheduler, and the pieces of a reverse step.

A scheduler owns the betas of one noise process q(x_t | x_0) = N(sqrt(a_t) x_0,
(1 - a_t) I), with a_t = alpha_bar(t) = prod_{s <= t} (1 - beta_s), and walks a
descending list of timesteps to undo it. DDPM and DDIM differ only in the
reverse step, so everything else lives here: noising, training targets,
conversions between epsilon, x_0 and v, timestep spacing, the posterior
q(x_prev | x_t, x_0) and the noise draw.

Numerics: betas and alphas_cumprod are float64; each coefficient is computed in
float64 and applied in the sample's dtype (a Python float for one timestep, a
tensor cast to the sample's dtype for a batch of timesteps).

The step before t is read from ``timesteps`` (``previous_timestep``), never
computed as ``t - T // n``: that arithmetic is wrong whenever the spacing is not
uniform (``linspace``, or ``trailing`` when n does not divide T).

The sampler registry, ``config`` and diffusers' save/load live in ``schedulers.configured``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffusion.checks import check_choice, check_int
from diffusion.schedulers.betas import BETA_SCHEDULES, get_beta_schedule, rescale_zero_terminal_snr
from diffusion.schedulers.configured import ConfiguredScheduler
from diffusion.schedulers.noise import Generators, randn_tensor
from diffusion.schedulers.options import (
    check_thresholding,
    check_trained_betas,
    custom_timesteps,
    dynamic_threshold,
    one_of,
)

Tensor = torch.Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class SchedulerOutput:
    """What a reverse step returns; unpacks and indexes like diffusers' output."""

    prev_sample: Tensor
    pred_original_sample: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.prev_sample, self.pred_original_sample))

    def __getitem__(self, key: int | slice | str):
        return getattr(self, key) if isinstance(key, str) else tuple(self)[key]


class NoiseScheduler(ConfiguredScheduler):
    """Base class of the schedulers (``DDPMScheduler``, ``DDIMScheduler``, ...); see the
    module docstring.

    ``config`` holds the constructor arguments, so ``type(s).from_config(s.config)``
    rebuilds the scheduler and the dict serialises to YAML/JSON as it is. A subclass
    declared with ``sampler_name="x"`` is what ``sampler="x"`` picks (``SAMPLERS``);
    ``register`` adds further names for one class with preset options (``dpmpp_3m`` is
    DPM-Solver++ with ``solver_order=3``). A subclass takes its own options as keyword
    arguments and forwards the noise-process ones here. The sampling loop needs only
    ``set_timesteps``, ``timesteps``, ``init_noise_sigma``, ``scale_model_input`` and
    ``step``, as in diffusers.
    """

    #: alpha_bar before the first training step: ``alpha_bar(-1)``, reached by the last step.
    final_alpha_cumprod: float = 1.0
    #: x_T = init_noise_sigma * N(0, I): 1 for these variance-preserving samplers.
    init_noise_sigma: float = 1.0
    #: model evaluations per step (a second-order sampler makes two).
    order: int = 1

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """What the network sees at ``timestep``: x_t itself for variance-preserving
        samplers (samplers in sigma space scale it)."""
        return sample

    @property
    def stochastic(self) -> bool:
        """Whether ``step`` draws noise, so that samples depend on the generator's stream."""
        return False

    @property
    def state_positions(self) -> list[int]:
        """Where the sampling loop holds a state of the reverse chain: i < len(timesteps)
        means x before the i-th call of ``step``, len(timesteps) the final x. Every
        position for one model evaluation per step; a second-order sampler leaves out
        the positions between the two stages of a step."""
        return list(range(len(self.timesteps) + 1))

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        trained_betas: Sequence[float] | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ):
        check_int("num_train_timesteps", num_train_timesteps)
        check_choice("beta_schedule", beta_schedule, tuple(BETA_SCHEDULES))
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("clip_sample", clip_sample, (True, False))
        check_choice("rescale_betas_zero_snr", rescale_betas_zero_snr, (True, False))
        if not clip_sample_range > 0:
            raise ValueError(
                f"clip_sample_range must be a positive number; got {clip_sample_range!r}."
            )
        check_int("steps_offset", steps_offset, minimum=0)
        if rescale_betas_zero_snr and prediction_type == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr=True needs prediction_type 'v_prediction' or 'sample', "
                "because at zero terminal SNR an epsilon prediction cannot recover x_0."
            )
        trained = check_trained_betas(trained_betas, num_train_timesteps)
        self.thresholding, self.dynamic_thresholding_ratio, self.sample_max_value = \
            check_thresholding(thresholding, dynamic_thresholding_ratio, sample_max_value)
        self._config: dict[str, Any] = dict(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
            clip_sample=clip_sample, clip_sample_range=clip_sample_range,
            timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            trained_betas=None if trained is None else trained.tolist(),
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
        )
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset

        betas = trained if trained is not None else get_beta_schedule(
            beta_schedule, num_train_timesteps, beta_start, beta_end)
        self.betas = rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._alpha_bars: list[float] = self.alphas_cumprod.tolist()  # fast scalar look-ups
        self._alphas_cumprod_on: dict[torch.device, Tensor] = {}  # per-device copies
        # Until set_timesteps is called the chain is every training step, as in diffusers.
        self.num_inference_steps: int | None = None
        self._use_timesteps(list(range(num_train_timesteps - 1, -1, -1)), device=None)

    # -------------------------------------------------------------- timesteps
    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None):
        """Choose the timesteps the reverse process visits: ``num_inference_steps`` of them
        spaced by ``timestep_spacing``, or the custom descending ``timesteps`` (a list, array
        or tensor of training timesteps; diffusers' argument), one of the two.

        Spacings as diffusers computes them (T = num_train_timesteps, n steps):
        ``leading`` = i * (T // n) + steps_offset, ``trailing`` = round(T - i * T / n) - 1,
        ``linspace`` = round(i * (T - 1) / (n - 1)); rounding is half-to-even, as numpy's.
        Always n of them: for some n (T = 1000, n = 61) numpy's float ``arange`` gives
        diffusers' ``trailing`` one more, a spurious -1.
        """
        steps = self._requested_timesteps(num_inference_steps, timesteps)
        self.num_inference_steps = len(steps)
        self._use_timesteps(steps, device)

    def _requested_timesteps(self, num_inference_steps, timesteps, integer: bool = True):
        """The descending timesteps ``set_timesteps`` was asked for: ``timesteps`` checked,
        or ``num_inference_steps`` of ``timestep_spacing`` (rounded when ``integer``)."""
        one_of("num_inference_steps", num_inference_steps, "timesteps", timesteps)
        if timesteps is not None:
            return custom_timesteps(timesteps, self.num_train_timesteps, integer)
        steps = self._spaced_timesteps(self._check_num_steps(num_inference_steps))
        return sorted((round(t) for t in steps) if integer else steps, reverse=True)

    def _check_num_steps(self, n: Any) -> int:
        T = self.num_train_timesteps
        return check_int("num_inference_steps", n, 1, T, note=" (num_train_timesteps)")

    def _spaced_timesteps(self, n: int) -> list[float]:
        """``n`` timesteps, descending, of ``timestep_spacing`` as ``set_timesteps`` documents,
        but ``linspace`` unrounded (i * (T - 1) / (n - 1), as diffusers' sigma-space samplers)."""
        T = self.num_train_timesteps
        if self.timestep_spacing == "leading":
            steps = [float(i * (T // n) + self.steps_offset) for i in range(n)]
        elif self.timestep_spacing == "trailing":
            delta = (T - T / n) - T  # numpy's arange(T, 0, -T / n) computes T + i * delta
            steps = [float(round(T + i * delta) - 1) for i in range(n)]
        else:
            step = (T - 1) / (n - 1) if n > 1 else 0.0
            steps = [i * step for i in range(n - 1)] + [float(T - 1 if n > 1 else 0)]
        if max(steps) >= T:
            raise ValueError(
                f"steps_offset={self.steps_offset} pushes the last of {n} leading timesteps past "
                f"num_train_timesteps - 1 = {T - 1}; use fewer steps or a smaller steps_offset."
            )
        return steps[::-1] if self.timestep_spacing != "trailing" else steps

    def _use_timesteps(self, steps: list[int], device) -> None:
        self.timesteps = torch.tensor(steps, dtype=torch.long, device=device)
        self._steps = list(steps)  # the same on the host, read where the device is not
        self._previous = dict(zip(steps, steps[1:] + [-1], strict=True))

    def _position_in_timesteps(self, timestep: Tensor) -> int | None:
        """The index of ``timestep`` in ``timesteps`` when it is one of its elements, as a
        loop over ``timesteps`` yields them (a 0-d view of it), read from the view's offset
        without waiting for the device; None for any other tensor."""
        ts = self.timesteps
        if timestep.ndim != 0 or timestep._base is not ts or ts.stride(0) != 1:
            return None
        index = timestep.storage_offset() - ts.storage_offset()
        return index if 0 <= index < len(ts) else None

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """The entry after ``timestep`` in ``timesteps``, where its step lands; -1 after the end."""
        t = self._as_int(timestep)
        if t not in self._previous:
            raise ValueError(
                f"timestep {t} is not in this scheduler's timesteps; step through "
                "scheduler.timesteps after set_timesteps(n)."
            )
        return self._previous[t]

    def _as_int(self, timestep: int | Tensor) -> int:
        """``timestep`` as a Python int. An element of ``timesteps`` on an accelerator is
        read from the host's copy (reading the device tensor would make the host wait for
        every queued kernel, at every step); any other tensor is read."""
        if torch.is_tensor(timestep):
            if timestep.numel() != 1:
                raise ValueError(
                    "step takes one timestep for the whole batch; got a tensor of shape "
                    f"{tuple(timestep.shape)}."
                )
            if timestep.device.type != "cpu":
                index = self._position_in_timesteps(timestep)
                if index is not None:
                    return self._steps[index]
            return int(timestep.item())
        return int(timestep)

    # -------------------------------------------------------- noise process
    def alpha_bar(self, timestep: int) -> float:
        """alpha_bar(t) as a float64 Python float; ``final_alpha_cumprod`` for t < 0."""
        return self.final_alpha_cumprod if timestep < 0 else self._alpha_bars[timestep]

    def _scales(self, timesteps: int | Tensor, like: Tensor):
        """(sqrt(a_t), sqrt(1 - a_t)) ready to multiply ``like`` (shape (B, ...)).

        One timestep (int or 0-d tensor) gives Python floats; a (B,) tensor gives
        tensors in ``like``'s dtype and device, shaped (B, 1, ..., 1).
        """
        if not torch.is_tensor(timesteps) or timesteps.ndim == 0:
            t = self._as_int(timesteps)
            if not 0 <= t < self.num_train_timesteps:
                raise ValueError(
                    f"timestep must be in [0, {self.num_train_timesteps - 1}]; got {t}."
                )
            a = self.alpha_bar(t)
            return math.sqrt(a), math.sqrt(1.0 - a)
        self.check_timesteps(timesteps)
        a = self._alphas_cumprod_table(like.device)[timesteps.to(like.device).flatten()]
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
        return a.sqrt().to(like.dtype), (1.0 - a).sqrt().to(like.dtype)

    def check_timesteps(self, timesteps: Tensor) -> None:
        """A tensor of training timesteps must hold integers in [0, T - 1]: indexing the
        alpha_bar table would otherwise wrap t = -1 round to T - 1 without a word.

        On the CPU the range is checked at once (a negligible min/max). On an accelerator a
        host-side check would sync the device on every training step, so the check is queued
        with ``torch._assert_async``: still no silent wrap, but it surfaces as a device-side
        assertion when the stream reaches it, not as this ValueError.
        """
        T = self.num_train_timesteps
        if timesteps.dtype.is_floating_point or timesteps.dtype.is_complex:
            raise ValueError(f"timesteps must be a tensor of integer dtype, in [0, {T - 1}]; "
                             f"got dtype {timesteps.dtype}.")
        if timesteps.device.type != "cpu":
            torch._assert_async(((timesteps >= 0) & (timesteps < T)).all(),
                                f"timesteps must be in [0, {T - 1}]")
        elif timesteps.numel() and not 0 <= int(timesteps.min()) <= int(timesteps.max()) < T:
            bad = timesteps[(timesteps < 0) | (timesteps >= T)]
            raise ValueError(f"timesteps must be in [0, {T - 1}]; got {int(bad.flatten()[0])}.")

    def _alphas_cumprod_table(self, device: torch.device) -> Tensor:
        """alphas_cumprod on ``device``, copied once (float32 on MPS, which has no float64)."""
        if device not in self._alphas_cumprod_on:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._alphas_cumprod_on[device] = self.alphas_cumprod.to(device=device, dtype=dtype)
        return self._alphas_cumprod_on[device]

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise, with one timestep or one per sample."""
        signal, sigma = self._scales(timesteps, original_samples)
        return signal * original_samples + sigma * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x_0 (Salimans & Ho 2022); ``sample`` is x_0."""
        signal, sigma = self._scales(timesteps, sample)
        return signal * noise - sigma * sample

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """What the model learns to output for x_t = add_noise(x0, noise, timesteps)
        (``timesteps`` are range-checked even where the target does not depend on them)."""
        if self.prediction_type == "v_prediction":
            return self.get_velocity(x0, noise, timesteps)
        self._scales(timesteps, x0)  # only checks them: the target does not depend on them
        return noise if self.prediction_type == "epsilon" else x0

    # ------------------------------------------ conversions of a model output
    def pred_original_sample(self, model_output: Tensor, timesteps: int | Tensor, sample: Tensor):
        """x_0 implied by ``model_output`` (of ``prediction_type``) at x_t = ``sample``."""
        signal, sigma = self._scales(timesteps, sample)
        if self.prediction_type == "epsilon":
            return (sample - sigma * model_output) / signal
        if self.prediction_type == "sample":
            return model_output
        return signal * sample - sigma * model_output

    def pred_epsilon(self, model_output: Tensor, timesteps: int | Tensor, sample: Tensor):
        """The noise implied by ``model_output`` (of ``prediction_type``) at x_t = ``sample``."""
        signal, sigma = self._scales(timesteps, sample)
        if self.prediction_type == "epsilon":
            return model_output
        if self.prediction_type == "sample":
            return (sample - signal * model_output) / sigma
        return signal * model_output + sigma * sample

    def pred_velocity(self, model_output: Tensor, timesteps: int | Tensor, sample: Tensor):
        """The velocity implied by ``model_output`` (of ``prediction_type``) at x_t = ``sample``."""
        if self.prediction_type == "v_prediction":
            return model_output
        signal, sigma = self._scales(timesteps, sample)
        eps = self.pred_epsilon(model_output, timesteps, sample)
        return signal * eps - sigma * self.pred_original_sample(model_output, timesteps, sample)

    # ------------------------------------------------- pieces of a reverse step
    def _step_pair(self, timestep: int | Tensor) -> tuple[int, int]:
        t = self._as_int(timestep)
        return t, self.previous_timestep(t)

    def posterior_mean(self, pred_original_sample: Tensor, sample: Tensor, timestep) -> Tensor:
        """Mean of q(x_prev | x_t, x_0) (DDPM eq. 7), prev being the next entry of ``timesteps``.

        With respaced timesteps the chain's own beta is 1 - a_t / a_prev (improved DDPM).
        """
        t, prev = self._step_pair(timestep)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(prev)
        beta = 1.0 - a_t / a_prev
        x0_coef = math.sqrt(a_prev) * beta / (1.0 - a_t)
        xt_coef = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
        return x0_coef * pred_original_sample + xt_coef * sample

    def posterior_variance(self, timestep: int | Tensor) -> float:
        """Variance of q(x_prev | x_t, x_0): (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)."""
        t, prev = self._step_pair(timestep)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(prev)
        return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)

    def _clip(self, pred_original_sample: Tensor) -> Tensor:
        """x_0_hat as the step uses it: dynamically thresholded when ``thresholding``, else
        clipped to +-clip_sample_range when ``clip_sample`` (diffusers' order)."""
        if self.thresholding:
            return dynamic_threshold(pred_original_sample, self.dynamic_thresholding_ratio,
                                     self.sample_max_value)
        if not self.clip_sample:
            return pred_original_sample
        return pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)

    @staticmethod
    def _randn(like: Tensor, generator: Generators) -> Tensor:
        """Standard normal noise shaped like ``like``, drawn as diffusers' ``randn_tensor`` does
        (a list of generators: one per sample, row i from generator i)."""
        return randn_tensor(like.shape, generator, like.device, like.dtype)
