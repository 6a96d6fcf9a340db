"""A dataset's latents under a trained autoencoder, encoded once and cached on disk.

Latent diffusion trains on the encoder's posterior over each image: its mean and standard
deviation (B, c, h, w each) are computed once per split and saved under the data cache
(``cache_dir``, else ``$DIFFUSION_CACHE``, else ``~/.cache/diffusion/data``) in ``latents/``.
The file is keyed by the autoencoder checkpoint (its absolute path, size and modification
time), the data (its content key and the preprocessed images' shape and a fingerprint of their
values) and the split: training the autoencoder further (a new checkpoint), another checkpoint,
or other data encodes again. A damaged file is removed and encoded again.

The scale that brings the latents to unit variance (Rombach et al. scale by 1 / std of the
training latents) is computed exactly from the cached moments, by the law of total variance:
Var z = mean over elements of std^2 + the variance of the means, no sampling.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from diffusion.data.datasets import to_model_range
from diffusion.data.files import DATA_CACHE_FIX, resolve_cache
from diffusion.runtime.files import load_cached, save_torch

FORMAT_VERSION = 1


def checkpoint_key(checkpoint: str | Path) -> str:
    """Identifies an autoencoder checkpoint file: its absolute path, size and modification time."""
    path = Path(checkpoint).absolute()
    stat = path.stat()
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"


def images_key(images: torch.Tensor) -> str:
    """The shape and a hash of uint8 ``images`` (every 97th row, so it stays cheap)."""
    sample = images[::97].contiguous()
    digest = hashlib.sha1(sample.numpy().tobytes()).hexdigest()[:16]
    return f"{tuple(images.shape)}:{digest}"


@torch.no_grad()
def encode_images(model, images: torch.Tensor, device: str | torch.device = "cpu",
                  batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ``model``'s posterior over each uint8 image, float32 on the CPU."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = model.encode(to_model_range(images[i:i + batch_size]).to(device))
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def cached_latents(model, checkpoint: str | Path, images: torch.Tensor, data: str, split: str,
                   cache_dir: str | Path | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the latents of ``images`` (uint8, split ``split`` of data ``data``)
    under ``model`` with the weights of ``checkpoint``: read from the cache, or encoded and
    written there."""
    key = json.dumps([FORMAT_VERSION, checkpoint_key(checkpoint), data, split,
                      images_key(images)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = resolve_cache(cache_dir) / "latents" / f"{split}@{digest}.pt"
    cached = load_cached(path)
    if isinstance(cached, dict) and {"mean", "std"} <= set(cached):
        return cached["mean"], cached["std"]
    mean, std = encode_images(model, images, device)
    save_torch({"mean": mean, "std": std, "key": key}, path, DATA_CACHE_FIX)
    return mean, std


def latent_scale(mean: torch.Tensor, std: torch.Tensor) -> float:
    """1 / the standard deviation of posterior samples over every element of the set:
    Var z = E[std^2] + Var(mean)."""
    variance = float(std.double().pow(2).mean() + mean.double().var(unbiased=False))
    if not math.isfinite(variance) or variance <= 0:
        raise ValueError(f"the latents' variance is {variance}: the autoencoder's encoder "
                         f"outputs no spread; train it longer or check its run.")
    return 1.0 / math.sqrt(variance)
