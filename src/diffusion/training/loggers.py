"""Metric and image loggers.

``metrics.jsonl`` is always written (the run folder must describe itself without
any service). W&B, TensorBoard and a CSV file are optional (``logger=[wandb,tensorboard,csv]``)
and must never block training: W&B with no API key runs offline and says so once, a failed
online start falls back to offline, and a logger that cannot start at all is named in one
line while training goes on without it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffusion.errors import RunError
from diffusion.runtime.files import write_atomic

log = logging.getLogger(__name__)


class Logger:
    """Interface: every method is optional for a concrete logger."""

    def log_config(self, config: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:  # noqa: B027
        pass

    def log_image(self, name: str, path: str | Path, step: int) -> None:  # noqa: B027
        pass

    def finish(self) -> None:  # noqa: B027
        pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep it visible rather than crash
    return value


class JsonlLogger(Logger):
    """Appends one JSON object per logged step to ``metrics.jsonl`` (resume appends)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file, in order. A damaged last line is the write a
    killed process left unfinished and is skipped; a damaged line before it is an error that
    names the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunError(f"{path} line {number} is damaged (not JSON): delete that line or "
                           "restore the file from a copy.") from None
    return records


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resume's checkpoint): those
    after it belong to training that the resume repeats, and a damaged last line goes too."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept),
                 "free space on the run folder's disk, then run again")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbLogger(Logger):
    """Weights & Biases logging.

    ``mode`` is ``online``, ``offline``, ``disabled`` or ``auto`` (online when an
    API key is configured, else offline). Offline runs land in ``<run>/wandb`` and
    can be uploaded later with ``wandb sync``.
    """

    def __init__(self, run_dir: str | Path, project: str = "diffusion", entity: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, group: str | None = None,
                 mode: str = "auto", init_timeout: float = 30.0, resume_id: str | None = None):
        import wandb  # imported here so `logger=none` never pays for it

        if mode not in {"auto", "online", "offline", "disabled"}:
            raise ValueError(
                f"logger.mode must be one of auto, online, offline, disabled; got {mode!r}."
            )
        if mode == "auto":
            mode = "online" if _has_wandb_credentials() else "offline"
            if mode == "offline":
                log.warning("W&B: no API key found, logging offline to %s/wandb "
                            "(upload later with `wandb sync`).", run_dir)
        self._wandb = wandb
        kwargs = dict(project=project, entity=entity, name=name, tags=list(tags or []),
                      group=group, dir=str(run_dir), id=resume_id, resume="allow" if resume_id
                      else None, settings=wandb.Settings(init_timeout=init_timeout, silent=True))
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            if mode != "online":
                raise
            log.warning("W&B: could not reach the server (%s); logging offline instead.",
                        type(exc).__name__)
            self.run = wandb.init(mode="offline", **kwargs)
        (Path(run_dir) / "wandb_id.txt").write_text(self.run.id)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_image(self, name: str, path: str | Path, step: int) -> None:
        self.run.log({name: self._wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.run.finish()


class TensorBoardLogger(Logger):
    """TensorBoard: scalars, sample grids and the config (as text) in ``<run>/tensorboard``,
    through torch's ``SummaryWriter`` (needs the ``tensorboard`` package)."""

    def __init__(self, run_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard
        except ImportError:
            raise ImportError("tensorboard is not installed (pip install -e '.[tensorboard]')"
                              ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(dict(config), indent=2, default=str)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # as code

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def log_image(self, name: str, path: str | Path, step: int) -> None:
        image = np.asarray(Image.open(path).convert("RGB"))
        self.writer.add_image(name, image, step, dataformats="HWC")

    def finish(self) -> None:
        self.writer.close()


class CsvLogger(Logger):
    """``<run>/metrics.csv``: one row per logged step and one column per metric, rebuilt at
    the start from ``metrics.jsonl`` (so a resume's file holds each step once), then
    appended to; a metric seen for the first time rewrites it with the new column."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows = [{k: v for k, v in r.items() if k != "time"}
                     for r in read_metrics(Path(run_dir) / "metrics.jsonl")]
        self.columns = self._columns(self.rows)
        self._rewrite()

    @staticmethod
    def _columns(rows: list[dict]) -> list[str]:
        names = sorted({k for r in rows for k in r} - {"step"})
        return ["step", *names]

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, buffer.getvalue(), "free space on the run folder's disk")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns = self._columns(self.rows)
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)


class LoggerGroup(Logger):
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = list(loggers)

    def log_config(self, config):
        for lg in self.loggers:
            lg.log_config(config)

    def log_metrics(self, metrics, step):
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_image(self, name, path, step):
        for lg in self.loggers:
            lg.log_image(name, path, step)

    def finish(self):
        for lg in self.loggers:
            lg.finish()
