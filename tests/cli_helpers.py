"""What the tests that run ``python -m diffusion.train`` in processes of their own share: a
network and data small enough for seconds of CPU, and an environment that keeps W&B and
thread counts out of the way."""

from __future__ import annotations

import os

TINY = ["model=basic", "model.base_channels=8", "trainer=debug", "sampler.steps=2", "logger=none",
        "data.batch_size=8", "data.num_workers=0"]
"""The smallest run: a basic UNet of width 8, the debug trainer, batch 8."""

EVERY_STEP_LOGGED = [*TINY, "trainer.log_every=1", "trainer.sample_every=0",
                     "trainer.val_every=0"]
"""``TINY`` logging every step and doing no periodic sampling or validation."""


def cli_env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0"}
