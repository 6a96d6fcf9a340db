"""Guided sampling under torchrun (two gloo processes on the CPU): the same images as one
process, for classifier-free and classifier guidance."""

from __future__ import annotations

import pytest

from diffusion.commands.train_classifier import train_classifier
from hydra_utils import compose_config
from test_classifier import classifier_overrides
from test_distributed import assert_same_samples_on_two_ranks
from test_train import run_training


@pytest.mark.slow
def test_guided_sampling_splits_across_ranks(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "conditioning=class", "trainer.sample_every=0", "trainer.val_every=0")
    classifier = tmp_path / "classifier"
    train_classifier(compose_config(classifier_overrides(tiny_mnist_root, "steps=2"),
                                    config_name="train_classifier"), classifier)
    assert_same_samples_on_two_ranks(
        [f"run={run}", "n=10", "batch_size=4", "sampler=ddpm", "sampler.steps=3", "labels=all",
         "guidance_scale=3", f"classifier={classifier}", "classifier_scale=2", "device=cpu"],
        tmp_path)
