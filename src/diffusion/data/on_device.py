"""A whole split on the training device, so small datasets cost no per-step host work.

``DeviceDataset`` holds the split preprocessed once as one uint8 tensor and gathers, flips and
scales batches there; the trainer (``diffusion.training.batches``) feeds it the same batch
order as a DataLoader over the ``ImageDataset``.
"""

from __future__ import annotations

import torch

from diffusion.data.datasets import ImageDataset, to_model_range


class DeviceDataset:
    """A whole split as one uint8 tensor (N, C, H, W) and int64 labels on ``device``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        random_flip: bool = False,
        device: str | torch.device = "cpu",
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("DeviceDataset needs uint8 images (N, C, H, W) and N labels")
        self.images, self.labels = images.to(device), labels.to(device)
        self.random_flip = random_flip

    @classmethod
    def from_dataset(
        cls, dataset: ImageDataset, device: str | torch.device = "cpu", num_workers: int = 0
    ) -> DeviceDataset:
        images, labels = dataset.preprocessed(num_workers)
        return cls(images, labels, dataset.random_flip, device)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, index: torch.Tensor, generator: torch.Generator, global_batch: int,
             part: slice):
        """Images ``index`` (this rank's ``part`` of the global batch) and their labels, each
        flipped (where this dataset flips) by a coin drawn from ``generator`` for the whole
        global batch and sliced, so the run does not depend on the process count."""
        flip = None
        if self.random_flip:
            coins = torch.rand(global_batch, device=self.device, generator=generator) < 0.5
            flip = coins[part]
        return self.batch(index, flip)

    def batch(self, index: torch.Tensor, flip: torch.Tensor | None = None):
        """Images ``index`` scaled to [-1, 1] (flipped where ``flip`` is true, when this
        dataset flips) and their labels, gathered on the dataset's device."""
        x = self.images[index]
        if self.random_flip and flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return to_model_range(x), self.labels[index]
