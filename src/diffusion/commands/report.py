"""``python -m diffusion.report sweep=<multirun folder> out=experiments/<name>``
(or ``python -m diffusion.report <multirun folder>``)

Writes ``<out>/README.md`` and its plots from the run folders of a sweep alone
(``diffusion.reporting.sweeps`` says what is read and what is written), so a report can be
regenerated.

``sweep`` may also list several folders, multirun or single runs, to compare jobs of
different sweeps (``sweep=[runs/multirun/A,runs/multirun/B/0]``). A ``notes.md`` in ``out`` is
kept at the top of the README.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from diffusion.checks import check_writable
from diffusion.commands.launcher import launch
from diffusion.config.options import check_report_options
from diffusion.reporting.jobs import find_jobs
from diffusion.reporting.sweeps import write_report


def report(cfg: DictConfig) -> Path:
    """Write the report ``cfg`` (conf/report.yaml) asks for; returns its README."""
    sweeps = [Path(str(s)) for s in check_report_options(cfg)]
    out = Path(cfg.out) if cfg.out else Path("experiments") / sweeps[0].name
    find_jobs(sweeps)  # the sweep folders hold runs, before anything is made
    check_writable(out, "set out= to a writable folder", folder=True, what="the report folder")
    readme = write_report(sweeps, out, cfg.title)
    print(f"report: {readme}")
    return readme


def _sweep_word(args: list[str]) -> list[str]:
    """A first bare word is the sweep folder: ``report runs/multirun/X`` is ``sweep=...``."""
    if args and "=" not in args[0] and not args[0].startswith("-"):
        return [f"sweep={args[0]}", *args[1:]]
    return args


def main() -> None:
    """``python -m diffusion.report sweep=<sweep folder> ...``; see the module docstring."""
    launch("report", report, rewrite=_sweep_word, distributed=False)


if __name__ == "__main__":
    main()
