"""What the tests that run ``python -m diffusion.train`` in processes of their own share: a
network and data small enough for seconds of CPU, and an environment that keeps W&B and
thread counts out of the way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from diffusion.training.loggers import read_metrics

TINY = ["model=basic", "model.base_channels=8", "trainer=debug", "sampler.steps=2", "logger=none",
        "data.batch_size=8", "data.num_workers=0"]
"""The smallest run: a basic UNet of width 8, the debug trainer, batch 8."""

EVERY_STEP_LOGGED = [*TINY, "trainer.log_every=1", "trainer.sample_every=0",
                     "trainer.val_every=0"]
"""``TINY`` logging every step and doing no periodic sampling or validation."""


def cli_env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0"}


def signal_after(module: str, args: list[str], run: Path, signum: int,
                 after_step: int = 3) -> tuple[int, str]:
    """Start ``python -m <module> *args`` (training into ``run``), send ``signum`` once its
    ``metrics.jsonl`` has logged ``after_step``; (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while not (metrics.is_file() and any(r.get("step", 0) >= after_step
                                         for r in read_metrics(metrics))):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr
