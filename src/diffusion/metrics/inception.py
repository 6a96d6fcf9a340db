"""torchmetrics' standard Inception-v3 FID features, for users who have the weights.

torchmetrics takes the network from torch-fidelity, which fetches
``weights-inception-2015-12-05-6726825d.pth`` into torch hub's checkpoint folder on first use.
Without network access the file has to be put there by hand (or passed as
``metrics.inception_weights``); this module checks first and says so in one sentence.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffusion.errors import FeatureNetworkError

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_ID = "inception-v3-2048"


def default_weights_path() -> Path:
    """Where torch-fidelity looks for the weights: ``<torch hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def check_inception_weights(weights: str | Path | None = None) -> Path:
    """The weights file to use; raises one sentence naming the missing file and where it goes."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise FeatureNetworkError(
            "metrics.features=inception needs torch-fidelity: pip install torch-fidelity "
            "(or use the dataset's own feature network, metrics.features=domain).") from None
    path = Path(weights).expanduser() if weights else default_weights_path()
    if not path.is_file():
        raise FeatureNetworkError(
            f"Inception weights not found: put {path.name} (from {INCEPTION_URL}) at {path}, "
            "or pass metrics.inception_weights=<file>, or use metrics.features=domain.")
    return path


class InceptionFeatures(nn.Module):
    """uint8 images (N, C, H, W) -> 2048-d Inception-v3 pool features, via torchmetrics.

    Greyscale images are repeated to three channels; torchmetrics resizes to 299 px. Float
    (N, 2048) features pass through unchanged, as with ``FeatureExtractor``.
    """

    num_features = 2048
    feature_id = INCEPTION_ID
    accuracy = None
    description = ("Inception-v3 pool features (torch-fidelity's weights), the standard FID "
                   "features; comparable with other Inception FIDs of the same reference, n and "
                   "image size")

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = check_inception_weights(weights)
        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                            feature_extractor_weights_path=str(path))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[1] == self.num_features and x.is_floating_point():
            return x
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        device = next(self.inception.parameters()).device
        return self.inception(x.to(device)).float()
