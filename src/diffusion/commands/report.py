"""``python -m diffusion.report sweep=<multirun folder> out=experiments/<name>``

Writes ``<out>/README.md`` and its plots from the run folders of a sweep alone
(``diffusion.reporting.sweeps`` says what is read and what is written), so a report can be
regenerated.

``sweep`` may also list several folders, multirun or single runs, to compare jobs of
different sweeps (``sweep=[runs/multirun/A,runs/multirun/B/0]``). A ``notes.md`` in ``out`` is
kept at the top of the README.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from diffusion.commands.launcher import launch
from diffusion.reporting.sweeps import write_report


def report(cfg: DictConfig) -> Path:
    """Write the report ``cfg`` (conf/report.yaml) asks for; returns its README."""
    sweeps = cfg.sweep if isinstance(cfg.sweep, ListConfig) else [cfg.sweep]
    sweeps = [Path(str(s)) for s in sweeps]
    out = Path(cfg.out) if cfg.out else Path("experiments") / sweeps[0].name
    readme = write_report(sweeps, out, cfg.title)
    print(f"report: {readme}")
    return readme


def main() -> None:
    """``python -m diffusion.report sweep=<sweep folder> ...``; see the module docstring."""
    launch("report", report, distributed=False)


if __name__ == "__main__":
    main()
