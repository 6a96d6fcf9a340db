"""A stopped and resumed run with DataLoader workers and random flips is bit-identical to an
uninterrupted one: each image's flip depends on the seed, its epoch and its index alone."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from diffusion.commands.train import train
from diffusion.training.checkpoint import latest_checkpoint
from test_train import SMALL_MODELS, run_training


def _state(run_dir) -> dict:
    state = torch.load(latest_checkpoint(run_dir / "checkpoints"), weights_only=True)
    return {"model": state["model"], "ema": state["ema"]["model"],
            "optimizer": state["optimizer"]["state"], "step": state["step"]}


def test_resume_with_workers_and_flips_is_bit_exact(tmp_path, tiny_mnist_root):
    args = ("model=basic", *SMALL_MODELS["basic"], "data.num_workers=2", "data.random_flip=true",
            "trainer.max_steps=6", "trainer.ckpt_every=3", "trainer.keep_last=0",
            "trainer.val_every=0", "trainer.sample_every=0")
    straight, _ = run_training(tmp_path, tiny_mnist_root, *args, name="straight")

    first, _ = run_training(tmp_path, tiny_mnist_root, *args, "trainer.max_steps=3",
                            name="resumed")
    cfg = OmegaConf.load(first / "config.yaml")
    cfg.resume = str(first)
    cfg.trainer.max_steps = 6
    train(cfg, first)

    a, b = _state(straight), _state(first)
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for idx, slots in a["optimizer"].items():
        for key, value in slots.items():
            assert torch.equal(value, b["optimizer"][idx][key]), f"optimizer {idx}.{key} differs"
