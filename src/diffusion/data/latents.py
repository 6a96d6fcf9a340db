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

``LatentDataset`` is what a latent run trains on: each item a fresh draw from its image's
posterior, scaled (``z = scale (mean + std eps)``, eps from the item's ``SampleKey``, so a resumed
run draws what an uninterrupted one did); a dataset that flips its images flips them before
encoding (the flipped images are encoded and cached too), since a flipped latent is not the
latent of the flipped image. ``DeviceLatents`` holds the same on the training device.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from diffusion.data.datasets import SampleKey, sample_generator, to_model_range
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


class LatentDataset(torch.utils.data.Dataset):
    """Items ``(z, label)``: a posterior draw of image ``index``'s scaled latent (see the module
    docstring). ``mean`` and ``std`` (N, c, h, w) are already scaled; ``flipped`` holds the
    (mean, std) of the horizontally flipped images where the data flips (each item then takes
    one of the two with probability 1/2, as ``ImageDataset`` flips). ``like`` (the pixel
    dataset) lends its name, classes and class names."""

    accepts_sample_keys = True

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor,
                 like=None, flipped: tuple[torch.Tensor, torch.Tensor] | None = None):
        if mean.shape != std.shape or len(mean) != len(labels):
            raise ValueError("LatentDataset needs mean and std of one shape and a label each.")
        self.mean, self.std, self.labels = mean, std, labels.to(torch.int64)
        self.flipped = flipped
        self.random_flip = flipped is not None
        self.channels, self.image_size = int(mean.shape[1]), int(mean.shape[-1])
        for key in ("name", "num_classes", "class_names"):
            setattr(self, key, getattr(like, key, None))

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int]:
        index, generator = ((key.index, sample_generator(key)) if isinstance(key, SampleKey)
                            else (key, None))
        mean, std = self.mean, self.std
        if self.flipped is not None and torch.rand((), generator=generator) < 0.5:
            mean, std = self.flipped
        eps = torch.randn(mean.shape[1:], generator=generator)
        return mean[index] + std[index] * eps, int(self.labels[index])

    def to_device(self, device: str | torch.device) -> DeviceLatents:
        return DeviceLatents(self, device)


class DeviceLatents:
    """A ``LatentDataset`` held on ``device``: batches gathered there, each posterior draw
    (and flip) from the trainer's generator, drawn for the whole global batch and sliced as
    ``DeviceDataset`` does."""

    def __init__(self, dataset: LatentDataset, device: str | torch.device):
        self.mean, self.std = dataset.mean.to(device), dataset.std.to(device)
        self.labels = dataset.labels.to(device)
        self.flipped = (None if dataset.flipped is None
                        else tuple(t.to(device) for t in dataset.flipped))
        self.random_flip = self.flipped is not None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def __len__(self) -> int:
        return len(self.mean)

    def draw(self, index: torch.Tensor, generator: torch.Generator, global_batch: int,
             part: slice):
        """Latents ``index`` (this rank's ``part`` of the global batch) and their labels."""
        mean, std = self.mean[index], self.std[index]
        if self.flipped is not None:
            flip = (torch.rand(global_batch, device=self.device, generator=generator)
                    < 0.5)[part][:, None, None, None]
            mean = torch.where(flip, self.flipped[0][index], mean)
            std = torch.where(flip, self.flipped[1][index], std)
        eps = torch.randn((global_batch, *mean.shape[1:]), device=self.device,
                          generator=generator)[part]
        return mean + std * eps, self.labels[index]


def latent_datasets(space, checkpoint: str | Path, train_set, val_set, data: str,
                    scale: float | None = None, cache_dir: str | Path | None = None,
                    num_workers: int = 0) -> tuple[LatentDataset, LatentDataset | None, float]:
    """(train, validation, scale): the pixel datasets as ``LatentDataset``s under ``space``'s
    autoencoder (the weights of ``checkpoint``), encoded once and cached; ``data`` identifies
    the data (``data_key``). ``scale`` None computes it from the training latents (a resume
    passes the one its run recorded)."""
    ae, device = space.autoencoder, space.device

    def moments(dataset, flip: bool = False):
        images, labels = dataset.preprocessed(num_workers)
        if flip:
            images = images.flip(-1)
        split = dataset.split + (":flipped" if flip else "")
        mean, std = cached_latents(ae, checkpoint, images, data, split, cache_dir, device)
        return mean, std, labels

    mean, std, labels = moments(train_set)
    scale = latent_scale(mean, std) if scale is None else float(scale)
    flipped = None
    if getattr(train_set, "random_flip", False):
        f_mean, f_std, _ = moments(train_set, flip=True)
        flipped = (f_mean * scale, f_std * scale)
    train = LatentDataset(mean * scale, std * scale, labels, like=train_set, flipped=flipped)
    val = None
    if val_set is not None:
        v_mean, v_std, v_labels = moments(val_set)
        val = LatentDataset(v_mean * scale, v_std * scale, v_labels, like=val_set)
    return train, val, scale
