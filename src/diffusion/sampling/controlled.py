"""A ControlNet run scored under control (``diffusion.evaluate control_image=...``): its draws
follow the given control images at one ``control_scale``, and each image's adherence to its
control is measured as it is drawn.

Adherence compares the control of the generated image with the control it was given, as the
run computes controls (``models.control.ControlImages``):

- ``edges``: the IoU of the two edge maps (pixels on an edge in both over pixels on an edge in
  either; 1 where both have none), higher is better;
- ``blur``: the mean squared difference of the two low-pass copies (in [-1, 1] units);
- ``mask``: the mean squared difference of the generated and the given pixels inside the
  kept rectangle.

The same measure at ``control_scale`` 0 (the base model's own draws from the same noise) is
the floor a trained ControlNet must beat.
"""

from __future__ import annotations

import torch

from diffusion.models.control import ControlImages
from diffusion.runtime import distributed as dist


def adherence(control: ControlImages, generated: torch.Tensor, given: torch.Tensor,
              index: torch.Tensor) -> torch.Tensor:
    """Per image: how closely ``generated`` (B, C, H, W in [-1, 1]) follows ``given``, its
    control images (see the module docstring; ``index`` places a mask's rectangle)."""
    made = control(generated.float(), index)
    given = given.to(made.device, made.dtype)
    if control.kind == "edges":
        a, b = made > 0, given > 0
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    if control.kind == "blur":
        return (made - given).pow(2).flatten(1).mean(1)
    keep = (given[:, -1:] + 1) / 2  # the rectangle
    error = (generated.float().to(keep.device) - given[:, :-1]).pow(2) * keep
    return error.flatten(1).sum(1) / (keep.flatten(1).sum(1) * generated.shape[1]).clamp(min=1)


def metric_name(control: ControlImages) -> str:
    return "iou" if control.kind == "edges" else "mse"


class ControlledPipeline:
    """``base`` (a ControlNet run's pipeline) drawing image i under ``control[i]`` at
    ``scale``; it answers as the base does, except that ``sample_across_ranks`` passes the
    controls and records every image's adherence (``scores``) before its ``transform``."""

    def __init__(self, base, control: torch.Tensor, index: torch.Tensor, scale: float):
        self.base, self.control, self.index, self.scale = base, control, index, float(scale)
        self.scores: list[torch.Tensor] = []

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def sample_across_ranks(self, n: int, *, chunk_size: int = 256, transform=None,
                            **options):
        chunks = -(-n // chunk_size)
        mine = iter(range(dist.rank(), chunks, dist.world_size()))  # in the order drawn
        self.scores = []

        def measure(images: torch.Tensor) -> torch.Tensor:
            start = next(mine) * chunk_size
            part = slice(start, start + len(images))
            self.scores.append(adherence(self.base.control, images, self.control[part],
                                         self.index[part]).cpu())
            return images if transform is None else transform(images)

        return self.base.sample_across_ranks(
            n, chunk_size=chunk_size, transform=measure, control=self.control[:n],
            control_scale=self.scale, **options)

    def mean_adherence(self) -> float:
        """The mean over every image drawn (all ranks)."""
        mine = torch.cat(self.scores) if self.scores else torch.zeros(0)
        total = dist.all_sum(torch.tensor([float(mine.sum()), float(len(mine))],
                                          device=self.base.device)).tolist()
        return total[0] / max(total[1], 1.0)
