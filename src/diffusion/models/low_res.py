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
