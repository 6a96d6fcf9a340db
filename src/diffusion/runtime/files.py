"""Writing files so that a failure loses nothing and leaves nothing behind.

``write_atomic`` writes a temporary file beside the target and renames it over the target, so a
reader sees the old file or the new one, never half of one; if the write fails (a full disk, a
folder that turned read-only) the temporary file is removed and the failure is one sentence
(``StorageError``) naming the file. ``load_cached`` reads a cache file back and treats a
damaged one (a write cut short by a kill, another version's format) as missing: it says which
file it drops, so the caller computes it again.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from diffusion.checks import check_writable
from diffusion.errors import StorageError

log = logging.getLogger(__name__)

Content = str | bytes | Callable[[IO[bytes]], Any]


def storage_error(path: str | os.PathLike, exc: OSError, fix: str) -> StorageError:
    """The one sentence for an ``OSError`` while writing ``path``; ``fix`` says what to do
    (``free space there, or set DIFFUSION_CACHE to a folder with space``)."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"The disk is full: {path} could not be written (no partial file "
                            f"is left): {fix}.")
    reason = (exc.strerror or type(exc).__name__).lower()
    return StorageError(f"Cannot write {path} ({reason}): {fix}.")


def write_atomic(path: str | os.PathLike, content: Content,
                 fix: str = "free space there, or write elsewhere") -> Path:
    """Write ``content`` (text, bytes, or a function writing to a binary file object) to
    ``path`` in one step: through a temporary file in the same folder, flushed to disk, then
    renamed over ``path``. On failure nothing is left behind and ``path`` keeps its old
    content; an ``OSError`` becomes a ``StorageError`` ending in ``fix``."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise storage_error(path, exc, fix) from None
    except RuntimeError as exc:  # torch.save's writer turns a failed write into this
        cause = _os_error(exc)
        if cause is None:
            raise
        raise storage_error(path, cause, fix) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc`` (its context or cause, at any depth), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def save_torch(obj: Any, path: str | os.PathLike,
               fix: str = "free space there, or write elsewhere") -> Path:
    """``torch.save(obj)`` to ``path`` through ``write_atomic``."""
    return write_atomic(path, lambda f: torch.save(obj, f), fix)


_WRITABLE: set[Path] = set()


def writable_folder(path: str | os.PathLike, fix: str) -> Path:
    """``path``, made if it is not there, once it is known that files can be written in it
    (checked once per folder and process); else one sentence ending in ``fix``."""
    path = Path(path)
    if path not in _WRITABLE:
        check_writable(path, fix, folder=True)
        _WRITABLE.add(path)
    return path


def load_cached(path: str | os.PathLike) -> Any | None:
    """The object a cache file holds, or None when there is none, or it is damaged: then it
    is removed with a warning naming it, so the caller computes and writes it again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # a damaged file can look like another pickle format
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler trips on, it is damaged
        log.warning("The cache file %s is damaged (%s): computing it again.", path,
                    str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
        path.unlink(missing_ok=True)
        return None
