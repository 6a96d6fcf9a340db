"""Guided sampling under torchrun (two gloo processes on the CPU): the same images as one
process, for classifier-free and classifier guidance."""

from __future__ import annotations

import pytest
import torch

from diffusion.train_classifier import train_classifier
from hydra_utils import compose_config
from test_classifier import classifier_overrides
from test_distributed import _launch
from test_train import run_training


@pytest.mark.slow
def test_guided_sampling_splits_across_ranks(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "conditioning=class", "trainer.sample_every=0", "trainer.val_every=0")
    classifier = tmp_path / "classifier"
    train_classifier(compose_config(classifier_overrides(tiny_mnist_root, "steps=2"),
                                    config_name="train_classifier"), classifier)
    args = [f"run={run}", "n=10", "batch_size=4", "sampler=ddpm", "sampler.steps=3", "labels=all",
            "guidance_scale=3", f"classifier={classifier}", "classifier_scale=2",
            "save_tensors=true", "device=cpu"]
    images = {}
    for nproc in (1, 2):
        out = tmp_path / f"grid{nproc}.png"
        _launch("diffusion.sample", [*args, f"out={out}"], nproc)
        images[nproc] = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert images[1].shape == (10, 1, 28, 28)
    torch.testing.assert_close(images[2], images[1], rtol=0, atol=1e-6)
