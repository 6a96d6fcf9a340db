"""The conditioning of a cascade's super-resolution stage (Saharia et al. 2021, SR3; Ho et al.
2022, "Cascaded Diffusion Models"): the low-resolution image, upsampled to the stage's size and
given to the network beside x (``cond_channels``), with noise-conditioning augmentation.

Augmentation noises the low-resolution image at a level s in [0, 1] with a variance-preserving
cosine schedule, ``sqrt(a) x + sqrt(1 - a) eps`` with ``a = cos^2(pi s / 2)`` (s = 0: the image
itself, s = 1: pure noise), and tells the network s. Training draws s uniformly from
[0, ``aug_max``] per sample, so the stage learns to trust its input less the noisier it is;
sampling uses one level (``level``; Ho et al. found a small one best), which hides the base
model's artefacts from the stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion.checks import check_int, check_number
from diffusion.errors import ConfigError
from diffusion.schedulers.base import randn_tensor


@dataclass
class LowResConditioning:
    """``factor``: the stage's image side over its input's; ``aug_max``: the largest training
    augmentation level; ``level``: the level sampling uses unless told otherwise."""

    factor: int = 2
    aug_max: float = 0.5
    level: float = 0.1

    def __post_init__(self):
        check_int("low_res.factor", self.factor, minimum=2)
        check_number("low_res.aug_max", self.aug_max, 0, 1)
        check_number("low_res.level", self.level, 0, 1)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) at 1 / ``factor`` of their side: the mean of each
        factor x factor block (the box filter, antialiased)."""
        return F.avg_pool2d(x, self.factor)

    @staticmethod
    def augment(low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``low`` noised to ``level`` (one per sample) with ``noise``."""
        a = torch.cos(0.5 * math.pi * level).pow(2).reshape(-1, 1, 1, 1)
        return a.sqrt() * low + (1.0 - a).sqrt() * noise

    def condition(self, low: torch.Tensor, size: int, level: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
        """What the network takes beside x: ``low`` augmented to ``level`` with ``noise``,
        upsampled (bilinear) to ``size``."""
        augmented = self.augment(low, level.to(low.dtype), noise.to(low.dtype))
        return F.interpolate(augmented, size=(size, size), mode="bilinear",
                             align_corners=False)

    def training_inputs(self, x0: torch.Tensor, generator: torch.Generator,
                        global_batch: int | None = None, part: slice | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, level) for clean full-size ``x0``: its low-resolution version augmented at
        a level drawn from U(0, ``aug_max``) per sample. Under several processes the levels and
        noise are drawn for the ``global_batch`` and ``part`` is this process's rows, so the
        run does not depend on the process count."""
        low = self.downsample(x0)
        n = global_batch or x0.shape[0]
        part = part or slice(0, n)
        level = torch.rand(n, device=x0.device, generator=generator)[part] * self.aug_max
        noise = torch.randn((n, *low.shape[1:]), device=x0.device, generator=generator)[part]
        return self.condition(low, x0.shape[-1], level, noise), level

    def network_inputs(self, x0: torch.Tensor, generator: torch.Generator,
                       global_batch: int | None = None, part: slice | None = None) -> dict:
        """What the network takes beside x in training: ``cond`` and ``level``."""
        cond, level = self.training_inputs(x0, generator, global_batch, part)
        return {"cond": cond, "level": level}

    def sampling_inputs(self, low: torch.Tensor | None, level: float | None, n: int,
                        image_shape: tuple[int, int, int], generator) -> StageInputs:
        """A draw of ``n`` images of ``image_shape``: its ``low``-resolution inputs checked, the
        level (None: ``self.level``) and the augmentation noise, drawn from ``generator``."""
        channels, size = image_shape[0], image_shape[1] // self.factor
        expected = (n, channels, size, size)
        if low is None or not torch.is_tensor(low) or tuple(low.shape) != expected:
            got = "none" if low is None else tuple(getattr(low, "shape", ()))
            raise ConfigError(f"this run is a super-resolution stage: pass low_res, the {n} "
                              f"images it upsamples, of shape {expected} (a base run's "
                              f"samples: diffusion.sample run=<base> upsample=<this run>); "
                              f"got {got}.")
        level = self.level if level is None else check_number("low_res_level", level, 0, 1)
        return StageInputs(self, low.float(), float(level), randn_tensor(expected, generator),
                           image_shape[1])


@dataclass
class StageInputs:
    """A super-resolution stage's inputs for one draw: the low-resolution images, the level
    they are noised to at sampling and the augmentation noise."""

    conditioning: LowResConditioning
    low: torch.Tensor
    level: float
    noise: torch.Tensor
    size: int

    def forward(self, forward, part: slice, device: torch.device):
        """``forward(x, t, y, cond=, level=)`` as ``forward(x, t, y)`` for images ``part`` of
        the draw: their upsampled, augmented inputs beside x (repeated where guidance doubles
        the batch)."""
        low = self.low[part].to(device)
        levels = torch.full((len(low),), self.level, device=device)
        cond = self.conditioning.condition(low, self.size, levels, self.noise[part].to(device))

        def conditioned(x: torch.Tensor, t, y=None) -> torch.Tensor:
            repeats = x.shape[0] // cond.shape[0]
            return forward(x, t, y, cond=cond.repeat(repeats, 1, 1, 1),
                           level=levels.repeat(repeats))
        return conditioned
