"""``torch.compile`` paths on the CPU (inductor): the compiled training step and the compiled
sampling forward compute what the eager ones do (about 20 s of compiling for a tiny network)."""

from __future__ import annotations

import pytest
import torch

from diffusion.models import BasicUNet
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDPMScheduler
from test_train import run_training


def test_compiled_training_matches_eager(tmp_path, tiny_mnist_root):
    common = ("model=basic", "model.base_channels=8",
              "trainer.sample_every=0", "trainer.val_every=0", "trainer.max_steps=3",
              "trainer.ckpt_every=3")
    weights = {}
    for flag in ("false", "true"):
        run_dir, summary = run_training(tmp_path, tiny_mnist_root, *common,
                                        f"trainer.compile={flag}", name=f"compile-{flag}")
        assert summary["step"] == 3
        weights[flag] = torch.load(run_dir / "checkpoints" / "step_00000003.pt",
                                   weights_only=True)["model"]
    for key, value in weights["false"].items():
        torch.testing.assert_close(weights["true"][key], value, rtol=1e-3, atol=1e-4)


def test_compiled_sampling_matches_eager():
    torch.manual_seed(0)
    model = BasicUNet(in_channels=1, base_channels=8)
    noise = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    images = {}
    for compile in (False, True):
        pipe = DiffusionPipeline(model, DDPMScheduler(), (1, 28, 28), device="cpu",
                                 compile=compile)
        images[compile] = pipe(4, steps=3, noise=noise).images
    torch.testing.assert_close(images[True], images[False], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="compile must be true, false or one of"):
        DiffusionPipeline(model, DDPMScheduler(), (1, 28, 28), device="cpu", compile="fast")
