"""Paths as records write them (reports, benchmark JSON): something anyone can paste.

A path under ``$DIFFUSION_DATA`` or ``$DIFFUSION_RUNS`` is written with the variable, a path
under the current folder relative to it, and any other path as a placeholder (``<data>``,
``<runs>``, ...), never as a folder of the machine that wrote the record.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ENV_ROOTS = ("DIFFUSION_DATA", "DIFFUSION_RUNS")

# the placeholder of a path outside the current folder and the variables, by the setting's
# last key (``paths.data_dir`` -> ``data_dir``)
PLACEHOLDERS = {"data_dir": "<data>", "root": "<data>", "runs_dir": "<runs>", "run": "<runs>",
                "sweep": "<runs>", "out": "<out>"}


def portable_path(path: str | os.PathLike, placeholder: str = "<path>") -> str:
    """``path`` as ``$DIFFUSION_DATA[/...]`` or ``$DIFFUSION_RUNS[/...]`` when under that
    variable's folder, relative when under the current folder, else ``placeholder``."""
    full = Path(os.path.abspath(os.path.expanduser(path)))
    for var in ENV_ROOTS:
        root = os.environ.get(var)
        if root and full.is_relative_to(os.path.abspath(root)):
            rest = full.relative_to(os.path.abspath(root)).as_posix()
            return f"${var}" if rest == "." else f"${var}/{rest}"
    if full.is_relative_to(Path.cwd()):
        return full.relative_to(Path.cwd()).as_posix()
    return placeholder


def _is_path(value: str) -> bool:
    return os.path.isabs(value) or value.startswith(("~", "./", "../"))


def portable_value(key: str, value):
    """A setting's value, through ``portable_path`` if it is a path (absolute, or starting
    with ``~``, ``./`` or ``../``), with the placeholder of its key."""
    if not isinstance(value, str) or not _is_path(value):
        return value
    return portable_path(value, PLACEHOLDERS.get(key.rpartition(".")[2], "<path>"))


def portable_arg(arg: str) -> str:
    """A command-line word; in a ``key=value`` override, a path value is made portable."""
    key, sep, value = arg.partition("=")
    return f"{key}={portable_value(key, value)}" if sep else arg


def shell_word(arg: str) -> str:
    """``arg`` quoted for a shell, leaving a value that starts with ``$DIFFUSION_DATA`` or
    ``$DIFFUSION_RUNS`` to be expanded."""
    key, sep, value = arg.partition("=")
    for var in ENV_ROOTS:
        if sep and (value == f"${var}" or value.startswith(f"${var}/")):
            rest = value[len(var) + 1:]
            return shlex.quote(f"{key}=") + f"${var}" + (shlex.quote(rest) if rest else "")
    return shlex.quote(arg)
