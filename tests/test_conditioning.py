"""Class-conditional training: the conditioning group, label dropout for classifier-free
guidance (part of the resumable stream), and the trainer's wall-clock budget."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from diffusion.commands.train import train
from diffusion.errors import ConfigError
from diffusion.models import BasicUNet
from diffusion.schedulers import DDPMScheduler
from diffusion.training import TrainerConfig
from diffusion.training.checkpoint import list_checkpoints
from diffusion.training.loggers import read_metrics
from diffusion.training.trainer import Trainer
from test_train import _weights, assert_same_state, run_training, straight_and_resumed

CONDITIONAL = ("conditioning=class", "model=basic", "model.base_channels=8")


def _trainer(tmp_path, label_dropout: float) -> Trainer:
    data = TensorDataset(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    model = BasicUNet(in_channels=1, image_size=8, base_channels=8, num_classes=10)
    cfg = TrainerConfig(device="cpu", precision="fp32", label_dropout=label_dropout,
                        progress=False)
    return Trainer(model, DDPMScheduler(num_train_timesteps=100),
                   lambda params: torch.optim.SGD(params, lr=0.0), data, cfg, batch_size=8,
                   run_dir=tmp_path, conditional=True)


def test_label_dropout_replaces_the_given_share_by_the_null_label(tmp_path):
    trainer = _trainer(tmp_path, label_dropout=0.25)
    y = torch.arange(20_000) % 10
    dropped = trainer._drop_labels(y, torch.Generator().manual_seed(0))
    null = dropped == 10
    # binomial(20000, 0.25): standard deviation 0.003 in the share
    assert abs(null.float().mean().item() - 0.25) < 0.015
    assert torch.equal(dropped[~null], y[~null])  # kept labels are untouched
    # independent of the label: every class loses about the same share
    shares = torch.stack([null[y == k].float().mean() for k in range(10)])
    assert (shares - 0.25).abs().max() < 0.05


def test_no_dropout_and_unconditional_batches_pass_through(tmp_path):
    trainer = _trainer(tmp_path, label_dropout=0.0)
    y = torch.arange(100) % 10
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert torch.equal(trainer._drop_labels(y, generator), y)
    assert torch.equal(generator.get_state(), state)  # no draw: the noise stream is unchanged
    assert trainer._drop_labels(None, generator) is None


def test_conditioning_class_sets_num_classes_from_the_data(tmp_path, tiny_mnist_root):
    run_dir, summary = run_training(tmp_path, tiny_mnist_root, *CONDITIONAL)
    assert summary["step"] == 4
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model.num_classes == 10 and saved.trainer.label_dropout == 0.1
    state = torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)
    # ten classes and the null label
    assert state["model"]["time_embed.label.weight"].shape[0] == 11


def test_conditional_resume_is_bit_exact(tmp_path, tiny_mnist_root):
    """The dropout draws come from the checkpointed noise stream, so a resumed conditional
    run drops the same labels as an uninterrupted one."""
    args = (*CONDITIONAL, "trainer.label_dropout=0.5", "trainer.ckpt_every=3",
            "trainer.keep_last=0")
    straight, first = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    assert_same_state(straight, first)
    a = _weights(straight)
    # and the dropout matters: without it the same run ends elsewhere
    other, _ = run_training(tmp_path, tiny_mnist_root, *args, "trainer.label_dropout=0",
                            "trainer.max_steps=6", name="other")
    c = _weights(other)
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def test_max_minutes_stops_after_the_step_it_is_in_with_a_checkpoint(tmp_path,
                                                                     tiny_mnist_root):
    run_dir, summary = run_training(
        tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
        "trainer.max_steps=8", "trainer.max_minutes=1e-6", "trainer.log_every=2",
        "trainer.ckpt_every=100", "trainer.sample_every=100")
    assert summary["step"] == 1 and "max_minutes" in summary["stopped"]  # not the log step
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_00000001.pt"]
    assert (run_dir / "samples" / "step_00000001.png").is_file()
    # a resume without the budget goes on to max_steps
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.resume, cfg.trainer.max_minutes = str(run_dir), 0
    assert train(cfg, run_dir)["step"] == 8
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 4, 6, 8]  # the launch's last step is always logged


@pytest.mark.parametrize("override, message", [
    ("trainer.label_dropout=1.0", "trainer.label_dropout must be a number in [0, 1)"),
    ("trainer.max_minutes=-1", "trainer.max_minutes must be a number >= 0"),
])
def test_bad_budget_and_dropout_values(tmp_path, tiny_mnist_root, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        run_training(tmp_path, tiny_mnist_root, "model=basic", override)
