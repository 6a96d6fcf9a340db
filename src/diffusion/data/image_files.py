"""Which files of a folder are images, and what their labels are; the standard library only.

Light on purpose: the config resolver ``${folder_classes:<folder>}`` (``diffusion.config.paths``)
counts a folder's classes while Hydra composes a config, before torch is imported, and
``diffusion.data.image_folder`` lists the same files with the same rule.

The rule: every file under the folder (recursively, through linked folders, each real folder
once) whose suffix is an image suffix, except hidden files and folders (names starting with
"."); a link back to the folder or above it is a loop and is skipped. The images are labelled
when they all
sit in subfolders of the folder: each top-level subfolder that holds an image is a class,
numbered in sorted order of its name. An image directly in the folder makes the whole folder
unlabelled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _images_under(folder: Path):
    """Image paths under ``folder``, walked in sorted order, hidden entries skipped. Linked
    folders are followed (a class folder may be a link to images kept elsewhere), each real
    folder once, so a link back to a folder already walked (a loop) adds nothing."""
    seen = set()
    for parent, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_image_name(name):
                yield Path(parent) / name


def _is_loop(entry: os.DirEntry, root: Path) -> bool:
    """Whether a subfolder of ``root`` is a link to ``root`` or a folder above it."""
    real, top = Path(os.path.realpath(entry.path)), Path(os.path.realpath(root))
    return real == top or real in top.parents


@dataclass(frozen=True)
class FolderListing:
    """The images of a folder: paths relative to it, and their labels (None: unlabelled)."""

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.labels is not None else None


def class_folders(root: str | os.PathLike) -> tuple[str, ...] | None:
    """The names of ``root``'s class subfolders, sorted, or None when ``root`` is unlabelled
    (an image directly in it, or no subfolder with images) or is not a folder."""
    root = Path(root)
    if not root.is_dir():
        return None
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    if any(e.is_file() and is_image_name(e.name) for e in entries):
        return None
    classes = tuple(e.name for e in entries if e.is_dir() and not e.name.startswith(".")
                    and not _is_loop(e, root)
                    and next(_images_under(Path(e.path)), None) is not None)
    return classes or None


def count_classes(root: str | None) -> int | None:
    """``root``'s number of class subfolders; None when unlabelled, unset or missing (the
    dataset then says what is wrong when it is built). The ``folder_classes`` resolver."""
    if not root:
        return None
    classes = class_folders(Path(root).expanduser())
    return len(classes) if classes else None


def list_images(root: str | os.PathLike, classes: tuple[str, ...] | None = None
                ) -> FolderListing:
    """Every image under ``root`` and its label. ``classes``: label by these class names (a
    held-out folder labelled as its training folder is; ``()``: unlabelled); None: by
    ``root``'s own subfolders. Raises ValueError when ``root`` does not fit ``classes``."""
    root = Path(root)
    own = class_folders(root)
    classes = (own or ()) if classes is None else tuple(classes)
    files = tuple(path.relative_to(root).as_posix() for path in _images_under(root))
    if not classes:
        return FolderListing(root, files, None, ())
    if own is None:
        raise ValueError(f"{root} is not split into class subfolders as the training folder "
                         "is: put each image in the subfolder of its class")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(own) - index.keys())
    if unknown:
        raise ValueError(f"{root} has class folder(s) {', '.join(unknown)} that the training "
                         f"folder lacks (its classes: {', '.join(classes)})")
    return FolderListing(root, files, tuple(index[f.split("/", 1)[0]] for f in files), classes)
