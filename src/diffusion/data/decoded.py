"""A folder of images decoded once: preprocessed uint8 tensors, cached on disk.

Decoding JPEGs and PNGs every epoch would make a folder of images train slower than the
built-in datasets, so the whole folder is decoded once (``Preprocess``: shorter side resized,
centre crop), held as one uint8 tensor (N, C, H, W), and saved under the data cache
(``cache_dir``, else ``$DIFFUSION_CACHE``, else ``~/.cache/diffusion/data``) in
``image_folder/``. The file is keyed by the folder (its absolute path), the channels, the
preprocessing and, for every image file, its relative path, size and modification time: adding,
removing, replacing or touching a file, moving the folder or changing ``image_size``,
``center_crop`` or the channels decodes again (and replaces the stale file of the same folder
and settings). Files that cannot be decoded are skipped, and named once per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, ImageOps

from diffusion.data.datasets import Preprocess
from diffusion.data.files import DATA_CACHE_FIX, resolve_cache
from diffusion.data.image_files import FolderListing
from diffusion.runtime.files import load_cached, save_torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_REPORTED: set[str] = set()  # cache files whose skipped images were reported in this process


@dataclass
class DecodedFolder:
    """The readable images of a listing: uint8 (N, C, H, W), int64 labels (0 when
    unlabelled), their relative paths, and the files that could not be decoded."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    skipped: list[str]


def listing_key(listing: FolderListing) -> str:
    """A hash of the folder's image files: relative path, size and modification time each."""
    h = hashlib.sha1(str(listing.root.absolute()).encode())
    for name in listing.files:
        stat = (listing.root / name).stat()
        h.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image (PNG's ``I;16``, or ``I``) scaled to 8 bits (v / 257): PIL's
    own conversion to ``L`` clips every value above 255, which turns it nearly white."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.asarray(image, dtype=np.float64) / 257.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


def _decode(path: Path, mode: str, preprocess: Preprocess) -> torch.Tensor | None:
    """One file as a preprocessed uint8 (C, H, W) tensor, EXIF orientation applied; None if
    it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image = _eight_bit(ImageOps.exif_transpose(image)).convert(mode)
        return preprocess(image)
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, it is unreadable
        return None


def _decode_all(listing: FolderListing, channels: int, preprocess: Preprocess
                ) -> DecodedFolder:
    mode = "L" if channels == 1 else "RGB"
    side = preprocess.image_size
    images = torch.empty((len(listing.files), channels, side, side), dtype=torch.uint8)
    kept, skipped = [], []
    paths = [listing.root / name for name in listing.files]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, x in enumerate(pool.map(lambda p: _decode(p, mode, preprocess), paths)):
            if x is None:
                skipped.append(listing.files[i])
            else:
                images[len(kept)] = x
                kept.append(i)
    labels = (torch.tensor([listing.labels[i] for i in kept], dtype=torch.int64)
              if listing.labels is not None else torch.zeros(len(kept), dtype=torch.int64))
    if skipped:  # a compact tensor of the readable ones
        images = images[:len(kept)].clone()
    return DecodedFolder(images, labels, [listing.files[i] for i in kept], skipped)


def decode_folder(listing: FolderListing, channels: int, preprocess: Preprocess,
                  cache_dir: str | os.PathLike | None = None) -> DecodedFolder:
    """The listing's images decoded and preprocessed, from the cache when it is current."""
    settings = json.dumps([FORMAT_VERSION, str(listing.root.absolute()), channels,
                           preprocess.image_size, preprocess.center_crop])
    prefix = (f"{listing.root.name or 'root'}-"
              f"{hashlib.sha1(settings.encode()).hexdigest()[:8]}")
    folder = resolve_cache(cache_dir) / "image_folder"
    path = folder / f"{prefix}-{listing_key(listing)}.pt"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{prefix}.lock")):
        cached = load_cached(path)
        if cached is not None:
            decoded = DecodedFolder(**cached)
        else:
            log.info("Decoding %d images under %s (once: cached as %s)", len(listing.files),
                     listing.root, path)
            decoded = _decode_all(listing, channels, preprocess)
            save_torch(vars(decoded), path, DATA_CACHE_FIX)
            for stale in folder.glob(f"{prefix}-*.pt"):
                if stale != path:
                    stale.unlink(missing_ok=True)
    if decoded.skipped and str(path) not in _REPORTED:
        _REPORTED.add(str(path))
        shown = ", ".join(decoded.skipped[:3]) + (", ..." if len(decoded.skipped) > 3 else "")
        log.warning("Skipped %d of %d image files under %s that could not be decoded (%s).",
                    len(decoded.skipped), len(listing.files), listing.root, shown)
    return decoded
