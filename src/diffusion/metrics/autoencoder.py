"""A convolutional autoencoder whose bottleneck is a feature space for FID without labels.

A folder of the user's own images may have no labels, so no domain classifier can be trained
on it, and Inception's weights may not be at hand. What the framework can always train is a
network that learns the images' structure by itself: this autoencoder compresses each image
(resized to 32 or 64 px inside) to ``num_features`` numbers and rebuilds it; those numbers
are the features FID and KID compare. They capture layout, shape and colour more than fine
texture, and they are specific to the network: scores are comparable only between
evaluations with the same feature id (the same training images and recipe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """Images in [-1, 1] -> stride-2 convolutions to 4x4 -> a ``num_features`` bottleneck
    (the features) -> transposed convolutions back to the image, trained with the mean
    squared reconstruction error. ``num_classes`` is accepted and unused (no labels)."""

    kind = "autoencoder"

    def __init__(self, in_channels: int = 3, num_classes: int | None = None,
                 image_size: int = 64, num_features: int = 64,
                 widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.work_size = 32 if image_size <= 32 else 64
        widths = (*widths, widths[-1]) if self.work_size == 64 else tuple(widths)
        chans = (in_channels, *widths)
        side = self.work_size // 2 ** len(widths)
        self.encoder = nn.Sequential(
            *(_down(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)), nn.Flatten(),
            nn.Linear(widths[-1] * side * side, num_features))
        back = chans[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(num_features, widths[-1] * side * side), nn.ReLU(),
            nn.Unflatten(1, (widths[-1], side, side)),
            *(_up(a, b) for a, b in zip(back[:-2], back[1:-1], strict=True)),
            nn.ConvTranspose2d(back[-2], in_channels, 4, 2, 1), nn.Tanh())
        self.num_features = num_features

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.work_size and x.shape[-2] == self.work_size:
            return x
        return F.interpolate(x, size=(self.work_size, self.work_size), mode="bilinear",
                             antialias=True, align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._resized(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction, at ``work_size``."""
        return self.decoder(self.features(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.mse_loss(self(x), self._resized(x))

    @torch.no_grad()
    def test_scores(self, x: torch.Tensor, labels: torch.Tensor | None = None
                    ) -> dict[str, float]:
        """{"test_mse": mean squared reconstruction error in [-1, 1] units} of one batch."""
        return {"test_mse": self.loss(x).item()}
