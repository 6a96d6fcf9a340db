"""Datasets of image tensors in [-1, 1], one class per dataset, registered by name.

An ``ImageDataset`` subclass describes its dataset (channels, size, classes, splits) and
loads its items; its items are preprocessed (resize, centre crop), randomly flipped and
scaled on the fly, for a ``DataLoader``. Indexed by a ``SampleKey``, an item's flip depends
only on (seed, epoch, index), so it is the same in any worker process and after a resume.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from diffusion.data.files import resolve_root


class Preprocess:
    """The deterministic part of the transform: image -> uint8 (C, H, W), or a batch of them.

    Resizes the shorter side to ``image_size`` and centre-crops to a square; runs once per image
    for the on-device path and per item for the DataLoader path, so both see the same pixels.
    """

    def __init__(self, image_size: int | None = None, center_crop: bool = False):
        self.image_size = image_size
        self.center_crop = center_crop

    def __call__(self, image) -> torch.Tensor:
        x = image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image)
        if self.image_size is not None:
            x = TF.resize(x, [self.image_size], antialias=True)
        if self.center_crop:
            side = min(x.shape[-2:])
            x = TF.center_crop(x, [side, side])
        return x


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1]."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


class SampleKey(NamedTuple):
    """Item ``index`` as drawn in epoch ``epoch`` of a run seeded ``seed``.

    The trainer's batch sampler yields these rather than bare indices, so that an item's random
    augmentation travels with it into whichever DataLoader worker loads it.
    """

    index: int
    seed: int
    epoch: int


def sample_generator(key: SampleKey) -> torch.Generator:
    """A generator seeded from a hash of ``key`` alone: the augmentation it draws does not
    depend on the process, the worker's RNG state or where a run was resumed."""
    digest = hashlib.blake2b(f"{key.seed}/{key.epoch}/{key.index}".encode(), digest_size=8)
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little"))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s order, from the seed and epoch alone (so a resumed
    run draws the order an uninterrupted one did)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


_REGISTRY: dict[str, type[ImageDataset]] = {}

_DESCRIPTION = ("channels", "image_size", "num_classes", "splits", "train_split", "eval_split")


class ImageDataset(Dataset):
    """A dataset whose items are ``(x, label)``, x float32 (C, H, W) in [-1, 1].

    A subclass is one dataset: it sets ``name`` (which registers it, for ``dataset_info``)
    and the description below, and implements ``load``. As a class attribute ``image_size``
    is the side of the stored images (None where sizes vary, which then needs ``image_size``
    and ``center_crop``); on an instance it is the side of the images it yields.

    Arguments: ``split`` (None: ``train_split``), ``root`` (see ``resolve_root``), ``image_size``
    and ``center_crop`` (see ``Preprocess``), ``random_flip``, ``download`` and ``cache_dir``
    (for datasets that fetch or unpack files). ``random_flip`` flips each item horizontally
    with probability 1/2. Indexed by a ``SampleKey`` (as the trainer does) the coin comes from
    ``sample_generator(key)``, which keeps a resumed run with DataLoader workers identical to
    an uninterrupted one; indexed by a plain int it comes from torch's global generator (seeded
    per worker by the DataLoader).
    """

    name: ClassVar[str]
    channels: ClassVar[int]
    image_size: int | None
    num_classes: ClassVar[int]
    splits: ClassVar[tuple[str, ...]]
    train_split: ClassVar[str]  # what the model trains on (and the FID floor is drawn from)
    eval_split: ClassVar[str]   # the FID reference and the feature networks' test set

    accepts_sample_keys = True  # the trainer's batch sampler may hand it SampleKey batches

    def __init_subclass__(cls, **kwargs):
        """Register a subclass that names a dataset, so it can be built by that name."""
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            return
        missing = [key for key in _DESCRIPTION if not hasattr(cls, key)]
        if missing:
            raise TypeError(f"dataset class {cls.__qualname__} does not set {', '.join(missing)}")
        taken = _REGISTRY.get(cls.name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise TypeError(f"dataset name {cls.name!r} is taken by {_qualified(taken)}")
        _REGISTRY[cls.name] = cls

    def __init__(
        self,
        split: str | None = None,
        root: str | os.PathLike | None = None,
        image_size: int | None = None,
        center_crop: bool = False,
        random_flip: bool = False,
        download: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ):
        split = split or self.train_split
        if split not in self.splits:
            raise ValueError(
                f"{self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if self.image_size is None and (image_size is None or not center_crop):
            raise ValueError(
                f"{self.name} images vary in size: set image_size and center_crop=true "
                "so that they can be batched"
            )
        self.split, self.random_flip = split, random_flip
        self.preprocess = Preprocess(image_size, center_crop)
        self.image_size = image_size or self.image_size
        self.source = self.load(resolve_root(root), split, download, cache_dir)

    def load(self, root: Path, split: str, download: bool,
             cache_dir: str | os.PathLike | None) -> Dataset:
        """Split ``split``'s (image, label) items, images as PIL images or uint8 (C, H, W)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not say how to load it")

    @classmethod
    def content_key(cls, **arguments) -> str:
        """What identifies the files the dataset built with ``arguments`` reads, beyond its
        name and arguments (cached FID references are keyed by it): nothing for datasets of
        fixed, checksummed files; a folder of the user's own images hashes its file list."""
        return ""

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int]:
        index, generator = (
            (key.index, sample_generator(key)) if isinstance(key, SampleKey) else (key, None)
        )
        image, label = self.source[index]
        x = self.preprocess(image)
        if self.random_flip and torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        return to_model_range(x), int(label)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The classes' names in label order, where the files name them (torchvision's
        ``classes``, an image folder's class folders); None otherwise."""
        names = getattr(self.source, "classes", None)
        if not names or len(names) != self.num_classes:
            return None
        return tuple(str(name) for name in names)

    def preprocessed(self, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image through ``preprocess`` once: uint8 (N, C, H, W) and int64 labels."""
        data, targets = getattr(self.source, "data", None), getattr(self.source, "targets", None)
        if isinstance(data, torch.Tensor) and isinstance(targets, torch.Tensor):
            # MNIST-likes hold their images as one uint8 tensor: preprocess it in chunks.
            chunks = [
                self.preprocess(data[i : i + 4096].unsqueeze(1)) for i in range(0, len(data), 4096)
            ]
            return torch.cat(chunks), targets.to(torch.int64)
        loader = DataLoader(_Preprocessed(self), batch_size=256, num_workers=num_workers)
        images, labels = zip(*loader, strict=True)
        return torch.cat(images), torch.cat(labels).to(torch.int64)


class _Preprocessed(Dataset):
    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset.source[index]
        return self.dataset.preprocess(image), int(label)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def dataset_info(name: str) -> type[ImageDataset]:
    """The class that describes (and loads) dataset ``name``, with a clear error for an
    unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def dataset_options(data: Mapping) -> dict:
    """The arguments of dataset ``data["name"]``'s own constructor (beyond ``ImageDataset``'s)
    that the data config ``data`` sets: an image folder's ``val_fraction``, ``val_root``, ...
    What a dataset built by name (FID references, figures, the bench) needs besides root,
    size and crop to be the dataset the config describes."""
    own = (inspect.signature(dataset_info(data["name"]).__init__).parameters.keys()
           - inspect.signature(ImageDataset.__init__).parameters.keys())
    return {key: data[key] for key in sorted(own) if key in data}


def data_key(data: Mapping) -> str:
    """What identifies the files the data config ``data`` reads: its name, and for a folder
    of the user's own images a hash of its file list (paths, sizes, times), so two runs on
    different folders of the same shape tell apart."""
    key = dataset_info(data["name"]).content_key(root=data.get("root"), **dataset_options(data))
    return f"{data['name']}@{key}" if key else str(data["name"])


def build_dataset(name: str, **arguments) -> ImageDataset:
    """Dataset ``name`` built with ``ImageDataset``'s ``arguments``; ``split=None`` means its
    training split (Flowers: ``trainval``). Raises ``DatasetNotFoundError`` naming the files to
    provide when they are missing and cannot be downloaded."""
    return dataset_info(name)(**arguments)
