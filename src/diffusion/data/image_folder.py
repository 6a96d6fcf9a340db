"""A folder of the user's own images as a dataset: ``data=image_folder data.root=<folder>``.

Every image under the folder (png, jpg, jpeg, webp, bmp, recursively; ``diffusion.data.image_files``
says which files count and how class subfolders label them) is converted to greyscale or RGB
(``data.channels``), resized and centre-cropped like Flowers102, decoded once and cached
(``diffusion.data.decoded``). The held-out split ``val`` (validation loss, FID reference) is a
seeded fraction of the folder (``val_fraction``, ``split_seed``) or a folder of its own
(``val_root``, labelled by the training folder's class names), and ``train`` is the rest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffusion.checks import check_int, check_number
from diffusion.data.datasets import ImageDataset
from diffusion.data.decoded import DecodedFolder, decode_folder, listing_key
from diffusion.data.image_files import IMAGE_SUFFIXES, FolderListing, list_images
from diffusion.errors import ConfigError, DatasetNotFoundError


class DecodedImages(Dataset):
    """(uint8 (C, H, W) image, label) items of tensors already preprocessed; ``classes``:
    the labels' names (the class folders), if any."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor,
                 classes: tuple[str, ...] | None = None):
        self.data, self.targets, self.classes = data, targets, classes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], int(self.targets[index])


def _listing(root: str | os.PathLike, key: str, classes: tuple[str, ...] | None = None
             ) -> FolderListing:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{key}={root} is not a folder: point {key} at a folder "
                                   "of images (png, jpg, jpeg, webp, bmp).")
    try:
        listing = list_images(folder.absolute(), classes)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}.") from None
    if not listing.files:
        raise DatasetNotFoundError(
            f"No images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) under {root}: point {key} "
            "at a folder that holds them (subfolders are searched; one per class labels them).")
    return listing


def split_indices(n: int, val_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """A seeded split of ``n`` images: round(val_fraction * n) held out (at least one when the
    fraction is above 0), the rest for training, each in ascending order."""
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {"val": order[:n_val].sort().values, "train": order[n_val:].sort().values}


class ImageFolderDataset(ImageDataset):
    """The images under ``root``; see the module docstring. Its ``channels`` is chosen
    (``color_channels``, which the config sets from ``data.channels``) and its
    ``num_classes`` is the folder's number of class subfolders (None: unlabelled)."""

    name = "image_folder"
    channels = 3
    image_size = None
    num_classes = None
    splits = ("train", "val")
    train_split = "train"
    eval_split = "val"

    def __init__(self, split: str | None = None, root: str | os.PathLike | None = None,
                 image_size: int | None = None, center_crop: bool = False,
                 random_flip: bool = False, download: bool = False,
                 cache_dir: str | os.PathLike | None = None, color_channels: int = 3,
                 val_fraction: float = 0.1, val_root: str | os.PathLike | None = None,
                 split_seed: int = 0):
        if not root:
            raise ConfigError("data=image_folder needs the folder of images: pass "
                              "data.root=<folder>.")
        if color_channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (greyscale) or 3 (RGB) for an image "
                              f"folder; got {color_channels!r}.")
        check_number("data.val_fraction", val_fraction, minimum=0, below=1)
        check_int("data.split_seed", split_seed, minimum=None)
        self.channels = color_channels
        self.val_fraction, self.val_root, self.split_seed = val_fraction, val_root, split_seed
        super().__init__(split, root, image_size, center_crop, random_flip, download, cache_dir)

    def load(self, root: Path, split: str, download: bool,
             cache_dir: str | os.PathLike | None) -> Dataset:
        listing = _listing(root, "data.root")
        self.num_classes = listing.num_classes
        if split == "val" and self.val_root:
            decoded = self._decode(_listing(self.val_root, "data.val_root", listing.classes),
                                   cache_dir)
            return DecodedImages(decoded.images, decoded.labels, listing.classes)
        if split == "val" and not self.val_fraction:
            raise ConfigError("data.val_fraction is 0 and data.val_root is null, so the image "
                              "folder has no held-out split: set one of them, or "
                              "data.val_split=null to train without one (and without FID).")
        decoded = self._decode(listing, cache_dir)
        index = (split_indices(len(decoded.images), self.val_fraction, self.split_seed)[split]
                 if not self.val_root else torch.arange(len(decoded.images)))
        return DecodedImages(decoded.images[index], decoded.labels[index], listing.classes)

    def _decode(self, listing: FolderListing, cache_dir) -> DecodedFolder:
        decoded = decode_folder(listing, self.channels, self.preprocess, cache_dir)
        if not len(decoded.images):
            raise DatasetNotFoundError(
                f"None of the {len(listing.files)} image files under {listing.root} could be "
                f"decoded (e.g. {decoded.skipped[0]}): replace them with readable images.")
        return decoded

    def preprocessed(self, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images, decoded and preprocessed already: uint8 (N, C, H, W), labels."""
        return self.source.data, self.source.targets

    @classmethod
    def content_key(cls, root=None, val_root=None, **arguments) -> str:
        """A hash of the files' paths, sizes and times (of ``val_root`` too), so references
        computed from an earlier state of the folders are not reused."""
        keys = [listing_key(_listing(r, k)) for r, k in ((root, "data.root"),
                                                         (val_root, "data.val_root")) if r]
        return hashlib.sha1("/".join(keys).encode()).hexdigest()[:16]
