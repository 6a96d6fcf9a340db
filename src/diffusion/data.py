"""torchvision datasets -> image tensors in [-1, 1].

``build_dataset`` gives an ``ImageDataset`` whose items are preprocessed (resize, centre
crop), randomly flipped and scaled on the fly, for a ``DataLoader``; indexed by a ``SampleKey``,
an item's flip depends only on (seed, epoch, index), so it is the same in any worker process and
after a resume. ``DeviceDataset`` holds
a whole split preprocessed once as one uint8 tensor on the training device, and gathers,
flips and scales batches there, so small datasets cost no per-step host work. The trainer
(``diffusion.training.batches``) feeds either from the same batch order.

Data lives under ``root`` (argument, else ``$DIFFUSION_DATA``, else ``./data``) in torchvision's
layout. A read-only root works: whatever torchvision would write (decompressed MNIST files, a
download) goes to a cache folder (``cache_dir``, else ``$DIFFUSION_CACHE``, else
``~/.cache/diffusion/data``) that links to the originals, prepared once. A file that is there
but damaged (cut short, or not the original) ends in ``DatasetCorruptError`` naming it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from filelock import FileLock
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout while torchvision downloads, so that a dead network fails fast."""


class DatasetNotFoundError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file is there but damaged; the message names it and says how to replace it.

    A kind of ``DatasetNotFoundError`` since, either way, the user has to provide the file,
    and the entry points already end with that error's message.
    """


def _original(path: Path) -> Path:
    """The file a user should replace: the original behind a cache link, else ``path``."""
    return path.resolve() if path.is_symlink() else path


def _md5_damage(kind: str, path: Path, md5: str, url: str) -> str | None:
    """Why ``path``, if it is there, is not the original file of MD5 ``md5`` (None if it is)."""
    if not path.is_file() or check_integrity(str(path), md5):
        return None
    found = hashlib.md5(path.read_bytes()).hexdigest()
    return (
        f"{kind} file {_original(path)} is corrupt or truncated (MD5 {found}, expected {md5}): "
        f"replace it with the original from {url}, or delete it so that download=true fetches "
        "it again."
    )


def _idx_size(path: Path) -> int | None:
    """The size in bytes that the header of uint8 idx file ``path`` (the MNIST format: 0, 0,
    type 0x08, number of dims, big-endian sizes) promises, or None without such a header."""
    with path.open("rb") as f:
        head = f.read(4)
        ndim = head[3] if len(head) == 4 and head[:3] == b"\0\0\x08" else 0
        dims = f.read(4 * ndim)
    if not 1 <= ndim <= 3 or len(dims) < 4 * ndim:
        return None
    return 4 + 4 * ndim + math.prod(struct.unpack(f">{ndim}I", dims))


# ---------------------------------------------------------------------------------------------
# Where the files are: one family of torchvision layouts per class
# ---------------------------------------------------------------------------------------------


class _MnistFiles:
    """``<root>/<Kind>/raw/``: torchvision reads the decompressed idx files, or makes them from
    the ``.gz`` archives (checking their MD5) when downloading is on."""

    def __init__(self, cls: type[tvd.MNIST]):
        self.cls = cls

    def folder(self, root: Path) -> Path:
        return root / self.cls.__name__ / "raw"

    def archives(self) -> list[str]:
        return [filename for filename, _ in self.cls.resources]

    def is_complete(self, root: Path) -> bool:
        return all(
            (self.folder(root) / name.removesuffix(".gz")).is_file() for name in self.archives()
        )

    def link(self, source: Path, cache: Path) -> None:
        for name in self.archives():
            _symlink(self.folder(source) / name, self.folder(cache) / name)

    def open(self, root: Path, split: str, download: bool) -> Dataset:
        return self.cls(str(root), train=split == "train", download=download)

    def missing(self, root: Path) -> str:
        return (
            f"{self.cls.__name__} not found under {self.folder(root)}: put "
            f"{', '.join(self.archives())} there"
        )

    def damaged(self, root: Path) -> str | None:
        """Why a file that torchvision would read from ``root`` is unusable, naming it (None if
        none is): once all idx files are unpacked, one whose size is not what its header says
        (torchvision would fail with a bare assertion); before, an archive whose MD5 is not
        the original's (torchvision would try to download it again)."""
        kind, folder = self.cls.__name__, self.folder(root)
        if not self.is_complete(root):
            for name, md5 in self.cls.resources:
                damage = _md5_damage(kind, folder / name, md5, f"{self.cls.mirrors[0]}{name}")
                if damage:
                    return damage
            return None
        for archive in self.archives():
            path = folder / archive.removesuffix(".gz")
            expected, found = _idx_size(path), path.stat().st_size
            if expected != found:
                reason = (f"no idx header in its {found} bytes" if expected is None
                          else f"expected {expected} bytes, found {found}")
                return (
                    f"{kind} file {_original(path)} is corrupt or truncated ({reason}): delete "
                    f"it so that it is unpacked again from {archive}, or replace it with the "
                    "original."
                )
        return None


class _FlowersFiles:
    """``<root>/flowers-102/``: ``jpg/`` plus the two original ``.mat`` files (MD5-checked)."""

    def folder(self, root: Path) -> Path:
        return root / "flowers-102"

    def _mat_files(self) -> list[tuple[str, str]]:
        return [tvd.Flowers102._file_dict[key] for key in ("label", "setid")]

    def is_complete(self, root: Path) -> bool:
        base = self.folder(root)
        return (base / "jpg").is_dir() and all(
            check_integrity(str(base / name), md5) for name, md5 in self._mat_files()
        )

    def link(self, source: Path, cache: Path) -> None:
        archive = tvd.Flowers102._file_dict["image"][0]
        for name in ["jpg", archive, *(name for name, _ in self._mat_files())]:
            _symlink(self.folder(source) / name, self.folder(cache) / name)

    def open(self, root: Path, split: str, download: bool) -> Dataset:
        if split == "trainval":
            return ConcatDataset(
                [tvd.Flowers102(str(root), split=s, download=download) for s in ("train", "val")]
            )
        return tvd.Flowers102(str(root), split=split, download=download)

    def missing(self, root: Path) -> str:
        mats = " and ".join(name for name, _ in self._mat_files())
        return (
            f"Flowers102 not found under {self.folder(root)}: put the jpg/ folder "
            f"(image_00001.jpg to image_08189.jpg) and the original {mats} there"
        )

    def damaged(self, root: Path) -> str | None:
        """Why a ``.mat`` file under ``root`` is unusable, naming it (None if none is): one
        that is there but not the original (torchvision would try to download it again)."""
        for name, md5 in self._mat_files():
            url = f"{tvd.Flowers102._download_url_prefix}{name}"
            damage = _md5_damage("Flowers102", self.folder(root) / name, md5, url)
            if damage:
                return damage
        return None


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, before loading it. ``image_size`` is None where sizes vary."""

    channels: int
    image_size: int | None
    num_classes: int
    splits: tuple[str, ...]
    train_split: str
    eval_split: str
    files: _MnistFiles | _FlowersFiles


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(1, 28, 10, ("train", "test"), "train", "test", _MnistFiles(tvd.MNIST)),
    "fashion_mnist": DatasetInfo(
        1, 28, 10, ("train", "test"), "train", "test", _MnistFiles(tvd.FashionMNIST)
    ),
    "flowers102": DatasetInfo(
        3, None, 102, ("train", "val", "test", "trainval"), "trainval", "test", _FlowersFiles()
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """``DATASET_INFO[name]``, with a clear error for an unknown name."""
    if name not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_INFO)}")
    return DATASET_INFO[name]


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$DIFFUSION_DATA``, else ``./data`` (made absolute)."""
    root = root or os.environ.get("DIFFUSION_DATA") or "data"
    return Path(root).expanduser().absolute()


def resolve_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Writable cache: ``cache_dir``, else ``$DIFFUSION_CACHE``, else ~/.cache/diffusion/data."""
    cache = cache_dir or os.environ.get("DIFFUSION_CACHE") or "~/.cache/diffusion/data"
    return Path(cache).expanduser().absolute()


def _symlink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` if the target exists (idempotent)."""
    if not target.exists() or (link.is_symlink() and link.resolve() == target.resolve()):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written, or created inside its nearest existing ancestor.

    A folder without any write permission bit counts as read-only even for root, who could
    write there anyway: such a folder is meant to stay untouched.
    """
    while not path.exists():
        path = path.parent
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(error: BaseException) -> str:
    """The last line of torchvision's (often multi-line, per-mirror) error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _raise_if_damaged(files: _MnistFiles | _FlowersFiles, root: Path) -> None:
    """End with the damaged file's name, instead of torchvision's traceback or a "not found"
    listing files that are there."""
    damage = files.damaged(root)
    if damage:
        raise DatasetCorruptError(damage)


def _open_source(name: str, root: Path, split: str, download: bool, cache_dir) -> Dataset:
    """Open the torchvision dataset, preparing a writable cache first if ``root`` is read-only."""
    files = DATASET_INFO[name].files
    where = root
    if not files.is_complete(root) and not _writable(files.folder(root)):
        tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        where = resolve_cache(cache_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{tag}"
        files.link(root, where)
    if files.is_complete(where):
        _raise_if_damaged(files, where)
        return files.open(where, split, download=False)
    hint = "(or set data.root / DIFFUSION_DATA to a folder that has them)"
    if not download:
        _raise_if_damaged(files, where)
        raise DatasetNotFoundError(
            f"{files.missing(root)} {hint}; downloading is off (download=true "
            "also unpacks archives that are already there)."
        )
    lock_dir = resolve_cache(cache_dir) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_dir / (hashlib.sha1(str(files.folder(where)).encode()).hexdigest()[:16] + ".lock")
    with FileLock(str(lock)), _socket_timeout(DOWNLOAD_TIMEOUT_S):
        try:
            return files.open(where, split, download=True)
        except (RuntimeError, OSError) as error:
            if files.is_complete(where):
                raise
            _raise_if_damaged(files, where)
            raise DatasetNotFoundError(
                f"{files.missing(root)} {hint}; downloading failed: {_short_reason(error)}"
            ) from error


# ---------------------------------------------------------------------------------------------
# Preprocessing shared by both loader paths
# ---------------------------------------------------------------------------------------------


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


class ImageDataset(Dataset):
    """A torchvision dataset whose items are ``(x, label)``, x float32 (C, H, W) in [-1, 1].

    ``source`` is the underlying torchvision dataset (a ``ConcatDataset`` for Flowers
    ``trainval``); ``random_flip`` flips each item horizontally with probability 1/2. Indexed by
    a ``SampleKey`` (as the trainer does) the coin comes from ``sample_generator(key)``, which
    keeps a resumed run with DataLoader workers identical to an uninterrupted one; indexed by a
    plain int it comes from torch's global generator (seeded per worker by the DataLoader).
    """

    accepts_sample_keys = True  # the trainer's batch sampler may hand it SampleKey batches

    def __init__(
        self,
        source: Dataset,
        name: str,
        split: str,
        preprocess: Preprocess,
        random_flip: bool = False,
    ):
        self.source, self.name, self.split = source, name, split
        self.preprocess, self.random_flip = preprocess, random_flip
        self.info = DATASET_INFO[name]

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
    def channels(self) -> int:
        return self.info.channels

    @property
    def image_size(self) -> int | None:
        """Side of the square images this dataset yields."""
        return self.preprocess.image_size or self.info.image_size

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

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


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    image_size: int | None = None,
    center_crop: bool = False,
    random_flip: bool = False,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` (``DATASET_INFO`` keys) as an ``ImageDataset``.

    ``split=None`` means the dataset's training split (Flowers: ``trainval``). Raises
    ``DatasetNotFoundError`` naming the files to provide when they are missing and cannot be
    downloaded.
    """
    info = dataset_info(name)
    split = split or info.train_split
    if split not in info.splits:
        raise ValueError(f"{name} has no split {split!r}: choose one of {', '.join(info.splits)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if info.image_size is None and (image_size is None or not center_crop):
        raise ValueError(
            f"{name} images vary in size: set image_size and center_crop=true "
            "so that they can be batched"
        )
    source = _open_source(name, resolve_root(root), split, download, cache_dir)
    return ImageDataset(source, name, split, Preprocess(image_size, center_crop), random_flip)


# ---------------------------------------------------------------------------------------------
# On-device data
# ---------------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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

    def batch(self, index: torch.Tensor, flip: torch.Tensor | None = None):
        """Images ``index`` scaled to [-1, 1] (flipped where ``flip`` is true, when this
        dataset flips) and their labels, gathered on the dataset's device."""
        x = self.images[index]
        if self.random_flip and flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return to_model_range(x), self.labels[index]
