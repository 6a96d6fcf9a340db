"""The feature networks' architectures: images in [-1, 1] -> penultimate features -> logits.

Each has ``features(x)`` (what FID and KID compare), ``num_features``, the training
``loss(x, labels)`` and ``test_scores(x, labels)`` (what ``info.json`` reports);
``ARCHITECTURES`` names them for ``FeatureSpec.arch``, so a recipe picks one by name and its
id records it. The classifiers need the dataset's labels; the autoencoder
(``diffusion.metrics.autoencoder``) needs none, for folders of unlabelled images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.metrics.autoencoder import ConvAutoencoder


class Classifier(nn.Module):
    """``body`` -> features -> ``head`` -> logits, trained with cross-entropy."""

    body: nn.Module
    head: nn.Module
    kind = "classifier"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), labels)

    @torch.no_grad()
    def test_scores(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """{"test_accuracy": top-1 accuracy} of one batch."""
        return {"test_accuracy": (self(x).argmax(1) == labels).float().mean().item()}


class LeNet(Classifier):
    """LeNet-style CNN for 28x28 greyscale: two conv-pool stages, a 128-d feature layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, num_features: int = 128,
                 image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (image_size // 4) ** 2, num_features), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(num_features, num_classes))
        self.num_features = num_features


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class SmallResNet(Classifier):
    """A ResNet-ish classifier for small RGB images: a stride-2 stem, one residual block per
    stage (each halving the resolution after the first), global average pooling."""

    def __init__(self, in_channels: int = 3, num_classes: int = 102,
                 widths: tuple[int, ...] = (16, 32, 64, 128), image_size: int = 64):
        super().__init__()
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(_ResBlock(cin, width, stride=1 if i == 0 else 2))
            cin = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(widths[-1], num_classes))
        self.num_features = widths[-1]


ARCHITECTURES = {"lenet": LeNet, "resnet": SmallResNet, "autoencoder": ConvAutoencoder}
