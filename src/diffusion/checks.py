"""The rules a value is checked by, each rule and each sentence written once.

Every check of the package goes through these few functions: the config layer
(``diffusion.config``) applies them to each key of a command before any work starts, and the
library's constructors apply the same ones to their arguments for Python users, so a bad value
reads the same from a notebook and from the command line. Each raises ``ConfigError`` (a
``ValueError``) whose one sentence names the key as the user types it, says what is allowed
and shows what was given. NaN and infinity are never a number here.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffusion.errors import ConfigError

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_bool", "check_choice",
           "check_image_file", "check_writable"]


def is_int(value: Any) -> bool:
    """An integer (numpy's too), but not a bool: ``steps=true`` is a mistake, not 1 step."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def check_int(key: str, value: Any, minimum: int | None = 1, maximum: int | None = None,
              note: str = "") -> int:
    """``value`` as an int in [``minimum``, ``maximum``] (either may be None: unbounded);
    bools and floats are refused, not truncated. ``note`` follows the range in the sentence,
    e.g. `` (images per FID)``."""
    if (not is_int(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        if minimum is not None and maximum is not None:
            bounds = f" from {minimum} to {maximum}"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        else:
            bounds = "" if maximum is None else f" <= {maximum}"
        raise ConfigError(f"{key} must be an integer{bounds}{note}; got {value!r}.")
    return int(value)


def check_number(key: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None, *, above: float | None = None,
                 below: float | None = None, note: str = "", allow_none: bool = False
                 ) -> float | None:
    """``value`` as a finite float within the bounds given: ``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive. ``allow_none`` lets null through (an option left unset)."""
    if value is None and allow_none:
        return None
    low = (minimum, "[", ">=") if minimum is not None else (above, "(", ">")
    high = (maximum, "]", "<=") if maximum is not None else (below, ")", "<")
    ok = is_number(value) and (
        low[0] is None or (value >= low[0] if low[1] == "[" else value > low[0])) and (
        high[0] is None or (value <= high[0] if high[1] == "]" else value < high[0]))
    if not ok:
        if low[0] is not None and high[0] is not None:
            bounds = f" in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        elif low[0] is not None:
            bounds = f" {low[2]} {low[0]:g}"
        else:
            bounds = "" if high[0] is None else f" {high[2]} {high[0]:g}"
        none = " or null" if allow_none else ""
        raise ConfigError(f"{key} must be a number{bounds}{none}{note}; got {value!r}.")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false; got {value!r}.")
    return value


def _kind(value: Any) -> type:
    """What a value is for matching a choice: 2.0 is not the choice 2, nor true the choice 1."""
    if isinstance(value, bool):
        return bool
    return int if is_int(value) else type(value)


def _spelled(choice: Any) -> str:
    """A choice as a config file spells it: null, true, false, or the value itself."""
    if choice is None:
        return "null"
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def check_choice(key: str, value: Any, choices: Iterable[Any], note: str = "") -> Any:
    """``value`` if it is one of ``choices`` (listed in the sentence in their order), of the
    same kind: ``solver_order=2.0`` is not the choice 2."""
    choices = list(choices)
    if not any(value == choice and _kind(value) is _kind(choice) for choice in choices):
        raise ConfigError(f"{key} must be one of {', '.join(map(_spelled, choices))}{note}; "
                          f"got {value!r}.")
    return value


def check_image_file(key: str, path: str | Path, example: str = "grid.png") -> Path:
    """``path`` as a file name whose suffix names an image format PIL writes."""
    from PIL import Image  # the one check that needs an image library

    if Path(path).suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"{key} must be an image file name such as {example}; got {str(path)!r}.")
    return Path(path)


def check_writable(path: str | Path, fix: str, folder: bool = False, what: str = "") -> None:
    """Fail now, before minutes of work, if ``path`` (a file to write; with ``folder``, a
    folder to write into) cannot be written; ``fix`` says what to do, ``what`` names the
    folder's role (``the run folder``). Nothing stays behind:
    the nearest existing folder is probed with a temporary file (root passes ``os.access``
    everywhere, so a real write is the only test that holds for every user and file system)."""
    path = Path(path)
    if folder:  # the caller writes into it next, so it is made here (with its parents)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the probe below names the folder that refuses
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder: {fix}.")
    elif path.is_dir():
        raise ConfigError(f"{path} is a folder, not a file: {fix}.")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{probe} is a file, so {path} cannot be written: {fix}.")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        where = "" if probe == (path if folder else path.parent) else f" at {probe}"
        raise ConfigError(f"Cannot write to {what + ' ' if what else ''}{path} ({reason}"
                          f"{where}): {fix}.") from None
    if not folder and path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path} is not writable: {fix}.")
