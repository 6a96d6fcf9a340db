"""How every command starts and ends: compose its config, check it, run it, and turn a
user's mistake into one sentence.

Each ``diffusion.commands.<name>.main`` is ``launch("<name>", work)`` (train prepares its
jobs first; ``samplers_oracle``, with its own flags, calls ``guarded``). A user's mistake,
any of ``USER_ERRORS`` or a ``ValueError`` from a check, ends the program with
``error: <one sentence>`` on stderr and exit status 1, the same way in every command; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from diffusion.config import helptext, preflight
from diffusion.config.keys import check_launcher, check_overrides
from diffusion.config.paths import CONF_DIR
from diffusion.errors import USER_ERRORS, ConfigError
from diffusion.runtime import distributed as dist

MISTAKES: tuple[type[BaseException], ...] = (*USER_ERRORS, ValueError)
"""What a user can cause: ended in one sentence, not a traceback."""


def fail(error: BaseException | str) -> NoReturn:
    """End the program with one sentence on stderr and exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def guarded(work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``work(*args, **kwargs)``, a user's mistake ending the program in one sentence, and
    Ctrl-C in one line with the conventional exit status 130 (no traceback)."""
    try:
        return work(*args, **kwargs)
    except MISTAKES as exc:
        fail(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def _check_sweep(argv: list[str], config_name: str,
                 precheck: Callable[[DictConfig], list[Path]]) -> None:
    """Every job of a sweep checked before the first runs, and no two writing one file."""
    overrides = get_args_parser().parse_known_args(argv)[0].overrides
    expanded = preflight.split_jobs(list(overrides), True)
    outputs = preflight.check_each(expanded, lambda overrides: precheck(
        preflight.compose(CONF_DIR, config_name, overrides, training=False).cfg))
    writers: dict[Path, list[int]] = {}
    for number, paths in enumerate(outputs):
        for path in paths:
            writers.setdefault(Path(path).resolve(), []).append(number)
    for path, jobs in writers.items():
        if len(jobs) > 1:
            raise ConfigError(f"sweep jobs {', '.join(map(str, jobs))} would all write {path}: "
                              "leave out= out (each job then names its own file) or sweep a "
                              "setting that changes it.")


def _resolving(argv: list[str]) -> list[str]:
    """``--cfg job`` (and ``all``) prints the config with its interpolations resolved
    (``--resolve``), so that it shows the values a run takes (an image folder's
    ``data.num_classes: 3``), not the ``${...}`` that computes them. ``--cfg hydra`` stays as
    it is: Hydra's node alone cannot resolve what points into the job's config."""
    options = get_args_parser().parse_known_args(argv)[0]
    return ["--resolve", *argv] if options.cfg in ("job", "all") and not options.resolve \
        else argv


def launch(config_name: str, work: Callable[[DictConfig], Any], *,
           rewrite: Callable[[list[str]], list[str]] = list, argv: list[str] | None = None,
           config_dir: str | Path = CONF_DIR, check_keys: bool = True,
           distributed: bool = True,
           precheck: Callable[[DictConfig], list[Path]] | None = None) -> None:
    """Run ``work(cfg)`` on the config Hydra composes from ``config_dir/config_name.yaml``
    and the command line (``argv``: given already prepared, else ``sys.argv`` through
    ``rewrite``). ``check_keys``: every key (of the rewritten argv) is checked against the
    command's config before Hydra sees it. ``distributed``: under torchrun the process group
    is set up around the work, so every rank takes its share. ``precheck(cfg)`` checks one
    job and returns the files it would write: a sweep (``-m``) checks every job with it
    before the first runs, and refuses jobs that would write the same file."""
    if argv is None:
        multirun = bool(get_args_parser().parse_known_args(sys.argv[1:])[0].multirun)
        guarded(check_launcher, sys.argv[1:])
        argv = guarded(rewrite, sys.argv[1:])
        if check_keys:
            guarded(check_overrides, argv, config_name, multirun)
        if precheck is not None and multirun:
            guarded(_check_sweep, argv, config_name, precheck)
    sys.argv = [sys.argv[0], *_resolving(argv)]

    def main(cfg: DictConfig) -> None:
        if not distributed:
            guarded(work, cfg)
            return
        dist.init_from_env()
        try:
            guarded(work, cfg)
        finally:
            dist.shutdown()

    helptext.register()  # --help lists the command's options with it
    main.__module__ = work.__module__  # Hydra names the job (and <job>.log) after it
    hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(main)()
