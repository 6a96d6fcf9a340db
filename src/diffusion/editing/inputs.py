"""Checks of what an edit starts from (images, masks, labels), shared by every editing method
and the command line, and the batching they share.

Each bad input is one ``ValueError`` sentence that says what shape or range is expected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion.errors import ConfigError
from diffusion.sampling.checks import check_generator, check_labels, check_sampling
from diffusion.sampling.images import as_images, as_mask, describe
from diffusion.schedulers import CONTINUOUS_SAMPLERS, NoiseScheduler
from diffusion.schedulers.continuous import ContinuousSampler
from diffusion.schedulers.noise import Generators, randn_tensor


def check_images(images, sample_shape: tuple[int, int, int], key: str = "images") -> torch.Tensor:
    """``images`` as a float32 (N, C, H, W) CPU tensor of the model's shape, in [-1, 1]: given
    as PIL images, a numpy array (N, H, W, C) in [0, 1] or a tensor in [-1, 1]
    (``diffusion.sampling.images``); one image is a batch of one."""
    return as_images(images, sample_shape, key)


def check_mask(mask, images: torch.Tensor) -> torch.Tensor:
    """``mask`` (1 where a pixel is filled in, 0 where it is kept) as a float32 (N, 1 or C, H, W)
    tensor for ``images`` (N, C, H, W): given as (H, W), (1 or C, H, W) or (1 or N, 1 or C, H, W),
    values in [0, 1]; or as a PIL image (white: fill in), a list of them (one per image) or a
    numpy array (H, W) or (N, H, W, 1), channels last."""
    n, c, h, w = images.shape
    mask = as_mask(mask, (h, w), c)
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a tensor of 0s and 1s (1: fill in) of size {h}x{w}, "
                         f"a PIL image or a numpy array; got {describe(mask)}.")
    m = mask.detach().float().cpu()
    while m.ndim < 4:
        m = m.unsqueeze(0)
    if m.ndim != 4 or tuple(m.shape[-2:]) != (h, w) or m.shape[1] not in (1, c) \
            or m.shape[0] not in (1, n):
        channels = "1 channel" if c == 1 else f"1 or {c} channels"
        raise ValueError(f"mask must be {h}x{w} with {channels} (one mask, or one per image: "
                         f"N={n}) to match the images; got shape {tuple(mask.shape)}.")
    if m.numel() and (float(m.min()) < 0 or float(m.max()) > 1):
        raise ValueError(f"mask values must be in [0, 1] (1: fill in, 0: keep); got values "
                         f"from {float(m.min()):g} to {float(m.max()):g}.")
    return m.expand(n, -1, -1, -1).contiguous()


def check_discrete(sampler) -> None:
    """The edits (img2img, inpainting) start a discrete sampler part-way: refuse a
    continuous-time one (a name or an object)."""
    if (isinstance(sampler, str) and sampler in CONTINUOUS_SAMPLERS) \
            or isinstance(sampler, ContinuousSampler):
        what = f"sampler={sampler}" if isinstance(sampler, str) else type(sampler).__name__
        raise ConfigError(f"the edits run the discrete samplers; {what} is a continuous-time "
                          f"one: use one of {', '.join(sorted(NoiseScheduler.SAMPLERS))}.")


def check_edit(pipe, images, steps: int, y, batch_size: int, sampler="ddim", eta=0.0,
               timestep_spacing=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The arguments every edit takes, checked as sampling checks them: (images, labels).
    The images are pixels in [-1, 1] (``pipe.encode`` takes a latent run's to its latents)."""
    images = check_images(images, pipe.image_shape)
    check_discrete(sampler)
    check_sampling(sampler, steps, eta, pipe.scheduler.num_train_timesteps,
                   batch_size=batch_size, timestep_spacing=timestep_spacing)
    return images, check_labels(y, len(images), pipe.num_classes)


def starting_noise(noise: torch.Tensor | None, shape: torch.Size,
                   generator: Generators) -> torch.Tensor:
    """``noise`` checked against ``shape``, or drawn whole from ``generator`` (so that the
    result does not depend on how the work is batched; a list: image i from generator i)."""
    if noise is None:
        return randn_tensor(shape, check_generator(generator, shape[0]))
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have the images' shape {tuple(shape)}; "
                         f"got {tuple(noise.shape)}.")
    return noise


def in_batches(n: int, batch_size: int,
               work: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``work`` on slices of ``batch_size`` of range(n), results concatenated (float32, CPU)."""
    return torch.cat([work(slice(s, min(s + batch_size, n))).float().cpu()
                      for s in range(0, n, batch_size)])
