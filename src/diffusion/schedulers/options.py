"""Options of the schedulers beyond the noise process's basics, checked: custom timestep and
sigma lists for ``set_timesteps``, ``trained_betas``, and dynamic thresholding (Saharia et
al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding")
with its arguments, all as diffusers names them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_choice, check_number


def one_of(*named: Any) -> None:
    """Refuse unless exactly one of the (name, value) pairs in ``named`` is not None."""
    names, values = named[::2], named[1::2]
    given = [name for name, value in zip(names, values, strict=True) if value is not None]
    if len(given) != 1:
        said = ("both" if len(names) == 2 else ", ".join(given)) if given else "neither"
        raise ValueError(f"set_timesteps takes one of {' or '.join(names)}; got {said}.")


def _numbers(name: str, values: Any) -> list[float]:
    """``values`` (a list, tuple, numpy array or 1-d tensor of real numbers) as floats."""
    listed = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(listed, (str, bytes)) or not isinstance(listed, (list, tuple)) or not listed \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   for v in listed):
        raise ValueError(f"{name} must be a non-empty list of finite numbers, largest first; "
                         f"got {values!r}.")
    return [float(v) for v in listed]


def custom_timesteps(timesteps: Any, num_train_timesteps: int,
                     integer: bool = True) -> list[int] | list[float]:
    """A custom list of timesteps, checked: strictly descending (a step visited twice would
    be a zero-length step), in [0, T - 1], integers where ``integer`` (the samplers on
    alpha_bar(t); those on a sigma table interpolate between training steps)."""
    values = _numbers("timesteps", timesteps)
    T = num_train_timesteps
    for v in values:
        if not 0 <= v <= T - 1 or (integer and v != int(v)):
            kind = "integers" if integer else "numbers"
            raise ValueError(f"timesteps must be {kind} in [0, {T - 1}] (training timesteps); "
                             f"got {v:g}.")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly descending, each visited once; got "
                         f"{[int(v) if v == int(v) else v for v in values]}.")
    return [int(v) for v in values] if integer else values


def custom_sigmas(sigmas: Any) -> list[float]:
    """A custom sigma table for the samplers in sigma space, as diffusers' Euler takes it: the
    sigma of every step and then the one the last step lands on (usually 0), strictly
    descending, all positive but that last one."""
    values = _numbers("sigmas", sigmas)
    if len(values) < 2 or values[-1] < 0 or min(values[:-1]) <= 0:
        raise ValueError("sigmas must list the sigma of each step and then the final one "
                         f"(at least two, positive but the last, which may be 0); got {values}.")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"sigmas must be strictly descending; got {values}.")
    return values


def check_trained_betas(trained_betas: Any, num_train_timesteps: int) -> torch.Tensor | None:
    """``trained_betas`` (one beta per training step, in (0, 1)) as float64, or None."""
    if trained_betas is None:
        return None
    betas = _numbers("trained_betas", trained_betas)
    if len(betas) != num_train_timesteps:
        raise ValueError(f"trained_betas has {len(betas)} values and num_train_timesteps is "
                         f"{num_train_timesteps}: pass one beta per training step.")
    if not all(0 < b < 1 for b in betas):
        raise ValueError("trained_betas must lie in (0, 1); got "
                         f"{next(b for b in betas if not 0 < b < 1)!r}.")
    return torch.tensor(betas, dtype=torch.float64)


def check_thresholding(thresholding: Any, ratio: Any, max_value: Any) -> tuple[bool, float, float]:
    """(thresholding, dynamic_thresholding_ratio, sample_max_value), checked."""
    check_choice("thresholding", thresholding, (True, False))
    ratio = check_number("dynamic_thresholding_ratio", ratio, maximum=1, above=0,
                         note=" (the quantile of |x_0| that sets the threshold)")
    max_value = check_number("sample_max_value", max_value, 1, None,
                             note=" (the largest threshold; 1 is plain clipping's range)")
    return thresholding, float(ratio), float(max_value)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding of an x_0 prediction, as diffusers' ``_threshold_sample``: per
    sample, s = the ``ratio`` quantile of |x_0|, clamped to [1, ``max_value``]; x_0 is clipped
    to [-s, s] and divided by s, so saturated pixels are pushed inward rather than clipped
    (s = 1 is plain clipping). Computed in float32 or better."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)
