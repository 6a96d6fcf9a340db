"""Where a dataset's files are, and whether they are usable, in torchvision's layouts.

Data lives under ``root`` (argument, else ``$DIFFUSION_DATA``, else ``./data``) in torchvision's
layout. A read-only root works: whatever torchvision would write (decompressed MNIST files, a
download) goes to a cache folder (``cache_dir``, else ``$DIFFUSION_CACHE``, else
``~/.cache/diffusion/data``) that links to the originals, prepared once. A file that is there
but damaged (cut short, or not the original) ends in ``DatasetCorruptError`` naming it; files
that are missing and cannot be downloaded end in ``DatasetNotFoundError`` saying what to put
where. Each layout class knows one family of torchvision datasets; ``open_files`` does the rest.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from filelock import FileLock
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

from diffusion.errors import DatasetCorruptError, DatasetNotFoundError
from diffusion.runtime.files import writable_folder

DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout while torchvision downloads, so that a dead network fails fast."""


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


class FileLayout(Protocol):
    """What ``open_files`` needs to know of a family of torchvision datasets."""

    def folder(self, root: Path) -> Path:
        """The dataset's folder under ``root``."""

    def is_complete(self, root: Path) -> bool:
        """Whether torchvision can read the dataset under ``root`` without writing anything."""

    def link(self, source: Path, cache: Path) -> None:
        """Link the files under ``source`` that torchvision reads into ``cache``."""

    def open(self, root: Path, split: str, download: bool) -> Dataset:
        """Split ``split`` as torchvision's dataset of (image, label) items."""

    def missing(self, root: Path) -> str:
        """What to put where, for a dataset that is not under ``root``."""

    def damaged(self, root: Path) -> str | None:
        """Why a file under ``root`` is unusable, naming it (None if none is)."""


class MnistFiles:
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


class FlowersFiles:
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


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$DIFFUSION_DATA``, else ``./data`` (made absolute)."""
    root = root or os.environ.get("DIFFUSION_DATA") or "data"
    return Path(root).expanduser().absolute()


DATA_CACHE_FIX = ("free space there, or set DIFFUSION_CACHE (or data.cache_dir) to a writable "
                  "folder with space")


def resolve_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Writable cache: ``cache_dir``, else ``$DIFFUSION_CACHE``, else ~/.cache/diffusion/data."""
    cache = cache_dir or os.environ.get("DIFFUSION_CACHE") or "~/.cache/diffusion/data"
    return writable_folder(Path(cache).expanduser().absolute(), DATA_CACHE_FIX)


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


def _raise_if_damaged(files: FileLayout, root: Path) -> None:
    """End with the damaged file's name, instead of torchvision's traceback or a "not found"
    listing files that are there."""
    damage = files.damaged(root)
    if damage:
        raise DatasetCorruptError(damage)


def open_files(files: FileLayout, root: Path, split: str, download: bool,
               cache_dir: str | os.PathLike | None) -> Dataset:
    """Split ``split`` of the torchvision dataset laid out as ``files`` under ``root``, preparing
    a writable cache first if ``root`` is read-only; ends in ``DatasetNotFoundError`` (or
    ``DatasetCorruptError``) saying which file to provide."""
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
