"""The pipeline's images in and out: what every ``DiffusionPipeline`` method returns
(``PipelineOutput``), the ``output_type`` conversions, the images and masks it accepts, and
saving any of them as one PNG grid.

The model works on float32 (N, C, H, W) tensors in [-1, 1]. Out, as diffusers names them:

- ``output_type="pt"``: those tensors, on the CPU (the default: what the pipeline always gave);
- ``output_type="np"``: float32 numpy arrays (N, H, W, C) in [0, 1], channels last;
- ``output_type="pil"``: a list of N PIL images (mode ``L`` for one channel, ``RGB`` for three).

In, the editing methods take any of the three (a PIL image or a list of them, a numpy array
(N, H, W, C) or (H, W, C) in [0, 1], or uint8 in [0, 255], a tensor (N, C, H, W) or (C, H, W)
in [-1, 1]), or a ``PipelineOutput``, always at the model's size; a PIL image's mode is
converted to the model's channels (``L`` or ``RGB``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion.checks import check_choice, check_image_file
from diffusion.errors import ConfigError
from diffusion.reporting.figures import save_grid

OUTPUT_TYPES = ("pt", "np", "pil")
RANGE_SLACK = 1e-3  # images a little outside their range (from rounding) are accepted
ACCEPTED = ("a PIL image or a list of them, a numpy array (N, H, W, C) in [0, 1] or a float "
            "tensor (N, C, H, W) in [-1, 1]")


@dataclass
class PipelineOutput:
    """What every ``DiffusionPipeline`` method returns (``return_dict=False``: ``to_tuple()``).

    ``images``: in the ``output_type`` asked for (see the module docstring). ``chain``
    (``return_chain=True``): x_t along the reverse process, (n, frames, C, H, W) tensors in the
    model's range whatever ``output_type``, at ``chain_timesteps`` (-1: the final x_0).
    ``latents``: ``invert``'s x_T, a (N, C, H, W) tensor (its ``images`` are the inverted
    images, as diffusers' inversion pipelines return both).
    """

    images: Any
    chain: torch.Tensor | None = None
    chain_timesteps: list[int] | None = None
    latents: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        """The fields that are set, in order (images, chain, chain_timesteps, latents): as
        diffusers' ``return_dict=False`` gives them, ``(images,)`` for plain sampling."""
        return tuple(getattr(self, f.name) for f in fields(self)
                     if getattr(self, f.name) is not None)

    def save(self, path: str | Path, nrow: int | None = None) -> Path:
        """The images as one PNG grid (``save_images``); returns the path."""
        return save_images(self.images, path, nrow=nrow)


def check_output_type(output_type: Any, channels: int | None = None) -> str:
    """One of ``OUTPUT_TYPES``; ``pil`` only for 1 or 3 ``channels``."""
    check_choice("output_type", output_type, OUTPUT_TYPES,
                 note=" (pt: tensors in [-1, 1], np: arrays (N, H, W, C) in [0, 1], "
                      "pil: PIL images)")
    if output_type == "pil" and channels not in (None, 1, 3):
        raise ConfigError(f"output_type='pil' needs images of 1 or 3 channels; this model "
                          f"makes {channels}: use output_type='np' or 'pt'.")
    return output_type


def to_output(images: torch.Tensor, output_type: str = "pt"):
    """(N, C, H, W) images in [-1, 1] as ``output_type`` gives them (module docstring)."""
    check_output_type(output_type, images.shape[1])
    images = images.detach().float().cpu()
    if output_type == "pt":
        return images
    unit = ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous().numpy()
    if output_type == "np":
        return unit
    pixels = (unit * 255).round().astype(np.uint8)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


# ---------------------------------------------------------------------------------- inputs


def as_images(images: Any, sample_shape: tuple[int, int, int],
              key: str = "images") -> torch.Tensor:
    """``images`` in any accepted form (module docstring) as a float32 (N, C, H, W) CPU tensor
    of the model's ``sample_shape``, in [-1, 1]; a wrong kind, size, channel count or range
    is one ``ValueError`` sentence."""
    if isinstance(images, PipelineOutput):
        images = images.images
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError(f"{key} is empty: pass at least one image.")
        return torch.cat([_batch(x, sample_shape, f"{key}[{i}]") for i, x in enumerate(images)])
    return _batch(images, sample_shape, key)


def _batch(x: Any, shape: tuple[int, int, int], key: str) -> torch.Tensor:
    if isinstance(x, Image.Image):
        return _from_pil(x, shape, key)
    if isinstance(x, np.ndarray):
        return _from_numpy(x, shape, key)
    if torch.is_tensor(x):
        return _from_tensor(x, shape, key)
    raise ValueError(f"{key} must be {ACCEPTED}; got {describe(x)}.")


def _from_tensor(images: torch.Tensor, shape: tuple[int, int, int], key: str) -> torch.Tensor:
    sizes = ", ".join(map(str, shape))
    if not images.dtype.is_floating_point:
        raise ValueError(f"{key} must be a float tensor in [-1, 1] of shape (N, {sizes}); got "
                         f"{describe(images)}.")
    images = images.unsqueeze(0) if images.ndim == 3 else images
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or not len(images):
        raise ValueError(f"{key} must have shape (N, {sizes}) for this model; got "
                         f"{tuple(images.shape)}.")
    low, high = float(images.min()), float(images.max())
    if low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:
        raise ValueError(f"{key} must be in [-1, 1], the model's range; got values from "
                         f"{low:g} to {high:g} (map [0, 1] images with 2 * x - 1).")
    return images.detach().float().cpu().clamp(-1, 1)


def _from_pil(image: Image.Image, shape: tuple[int, int, int], key: str) -> torch.Tensor:
    c, h, w = shape
    if c not in (1, 3):
        raise ValueError(f"{key} is a PIL image but this model takes {c} channels: pass a "
                         f"float tensor (N, {c}, {h}, {w}) in [-1, 1].")
    if image.size != (w, h):
        raise ValueError(f"{key} is {image.width}x{image.height} but this model makes {w}x{h} "
                         f"images: resize it first, e.g. image.resize(({w}, {h})).")
    return _from_numpy(np.asarray(image.convert("L" if c == 1 else "RGB")), shape, key)


def _from_numpy(array: np.ndarray, shape: tuple[int, int, int], key: str) -> torch.Tensor:
    c, h, w = shape
    a = array[..., None] if array.ndim == 2 and c == 1 else array
    a = a[None] if a.ndim == 3 else a
    if a.ndim != 4 or tuple(a.shape[1:]) != (h, w, c) or not len(a):
        raise ValueError(f"{key} as a numpy array must have shape (N, {h}, {w}, {c}), channels "
                         f"last as output_type='np' gives them; got {tuple(array.shape)}.")
    if a.dtype == np.uint8:
        unit = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.floating):
        unit = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        low, high = float(unit.min()), float(unit.max())
        if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
            raise ValueError(f"{key} as a float numpy array must be in [0, 1]; got values from "
                             f"{low:g} to {high:g} (a uint8 array may be in [0, 255]).")
    else:
        raise ValueError(f"{key} as a numpy array must be float in [0, 1] or uint8; got "
                         f"dtype {a.dtype}.")
    return (unit.permute(0, 3, 1, 2) * 2 - 1).clamp(-1, 1).contiguous()


def as_mask(mask: Any, size: tuple[int, int], channels: int) -> Any:
    """A PIL mask (or a list of them: one per image) or a numpy mask ((H, W), (H, W, 1|C) or
    (N, H, W, 1|C), float in [0, 1], uint8 or bool) as a float (N, 1|C, H, W) tensor; a PIL
    image is 1 where its pixels are half grey or brighter (white = fill in, as in a PNG
    mask). A tensor (or anything else) is returned as it is, for the tensor checks."""
    h, w = size
    if isinstance(mask, Image.Image):
        mask = [mask]
    if isinstance(mask, list | tuple) and mask and all(isinstance(m, Image.Image) for m in mask):
        for i, m in enumerate(mask):
            if m.size != (w, h):
                raise ValueError(f"mask[{i}] is {m.width}x{m.height} but the images are "
                                 f"{w}x{h}: resize it first, e.g. mask.resize(({w}, {h})).")
        return torch.stack([torch.from_numpy(np.asarray(m.convert("L")) >= 128).float()[None]
                            for m in mask])
    if not isinstance(mask, np.ndarray):
        return mask
    m = mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask.astype(np.float32)
    m = torch.from_numpy(np.ascontiguousarray(m))
    if m.ndim == 2:
        return m
    if m.ndim in (3, 4) and m.shape[-1] in (1, channels) and tuple(m.shape[-3:-1]) == (h, w):
        return m.movedim(-1, -3)
    raise ValueError(f"mask as a numpy array must be ({h}, {w}), ({h}, {w}, 1) or (N, {h}, "
                     f"{w}, 1), channels last; got {tuple(mask.shape)}.")


def describe(value: Any) -> str:
    """A value's kind and shape, for an error sentence."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} numpy array of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------- saving


def save_images(images: Any, path: str | Path, nrow: int | None = None) -> Path:
    """``images`` as one PNG grid at ``path`` (its folder made; ``nrow`` images a row, default
    a square-ish grid): any ``output_type``'s images (tensors in [-1, 1], numpy arrays in
    [0, 1], PIL images), one image or a ``PipelineOutput``. Returns the path."""
    path = check_image_file("path", path)
    if isinstance(images, PipelineOutput):
        images = images.images
    if isinstance(images, Image.Image | np.ndarray) or torch.is_tensor(images):
        images = [images]
    if not isinstance(images, list | tuple) or not images:
        raise ValueError(f"images to save must be {ACCEPTED}; got {describe(images)}.")
    batch = [_any_batch(x, f"images[{i}]") for i, x in enumerate(images)]
    if len({tuple(x.shape[1:]) for x in batch}) > 1:
        raise ValueError("images to save must all have one size and channel count; got "
                         f"{sorted({tuple(x.shape[1:]) for x in batch})}.")
    batch = torch.cat(batch)
    return save_grid(batch, path, nrow=nrow or max(1, math.ceil(math.sqrt(len(batch)))))


def _any_batch(x: Any, key: str) -> torch.Tensor:
    """One accepted image or batch, of whatever shape, as (N, C, H, W) in [-1, 1]."""
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("L" if x.mode in ("1", "L", "I", "I;16", "F") else "RGB"))
    if isinstance(x, np.ndarray):
        x = x[..., None] if x.ndim == 2 else x
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4:
            raise ValueError(f"{key} must be (N, H, W, C) as a numpy array; got {x.shape}.")
        return _from_numpy(x, (x.shape[3], x.shape[1], x.shape[2]), key)
    if torch.is_tensor(x) and x.ndim in (3, 4) and x.dtype.is_floating_point:
        return x.detach().float().cpu().reshape(-1, *x.shape[-3:])  # clamped by save_grid
    raise ValueError(f"{key} must be {ACCEPTED}; got {describe(x)}.")
