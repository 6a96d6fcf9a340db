"""The recipes on the real datasets (skipped without them; slow)."""

from __future__ import annotations

import pytest

from diffusion.training.loggers import read_metrics
from test_train import run_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("experiment", ["mnist_cpu", "fashion_mnist", "flowers64"])
def test_recipe_trains_on_real_data(tmp_path, shared_data_root, experiment):
    run_dir, summary = run_training(
        tmp_path, shared_data_root, f"experiment={experiment}", "trainer=debug",
        "trainer.max_steps=2", "trainer.val_batches=1", "data.batch_size=4", name=experiment)
    assert summary["step"] == 2
    losses = [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
              if "train/loss" in r]
    # Every recipe's attention UNet starts with a zero output and two steps barely move it, so
    # its MSE to the unit-variance epsilon target is E[eps^2] = 1 (measured 0.98-0.99).
    assert len(losses) == 1 and losses[0] == pytest.approx(1.0, abs=0.1), losses
