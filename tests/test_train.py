"""The trainer end to end on tiny MNIST-format files, through the real configs,
torchvision loaders and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.train import train
from diffusion.errors import ConfigError, TrainingError
from diffusion.training.checkpoint import latest_checkpoint, list_checkpoints
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config, debug_overrides

SMALL_MODELS = {
    "basic": ["model.base_channels=8"],
    "unet": ["model.base_channels=8", "model.norm_groups=4"],
    "unet_attn": ["model.base_channels=8", "model.norm_groups=4", "model.num_res_blocks=1"],
}


def run_training(tmp_path: Path, data_root: Path, *overrides: str, name: str = "run"):
    cfg = compose_config(debug_overrides(data_root, *overrides))
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train(cfg, run_dir)
    return run_dir, summary


@pytest.mark.parametrize("model", sorted(SMALL_MODELS))
def test_short_run_writes_a_complete_run_folder(tmp_path, tiny_mnist_root, model):
    run_dir, summary = run_training(tmp_path, tiny_mnist_root, f"model={model}",
                                    *SMALL_MODELS[model])
    assert summary["step"] == 4
    records = read_metrics(run_dir / "metrics.jsonl")
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [2, 4]
    # Four steps at a warm-up LR of ~1e-6 leave the network nearly untrained: its output is ~0
    # (or small noise), so its MSE to the unit-variance epsilon target is about E[eps^2] = 1
    # (measured 0.90-1.32 over the three backbones and seeds 0-2).
    assert all(0.75 < r["train/loss"] < 1.5 for r in train_records)
    # 8 of 64 images a step; the LR of a 500-step warm-up after 2 and 4 optimizer steps
    assert [r["train/epoch"] for r in train_records] == [0.25, 0.5]
    assert [r["train/lr"] for r in train_records] == pytest.approx([2e-4 * 3 / 500, 2e-4 * 5 / 500])
    assert any("val/loss" in r for r in records)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "step_00000002.pt", "step_00000004.pt"]
    _assert_plain(torch.load(run_dir / "checkpoints" / "step_00000004.pt", weights_only=True))
    assert (run_dir / "samples" / "step_00000004.png").is_file()
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 0 and env["device"] == "cpu" and "git" in env
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model._target_.endswith({"basic": "BasicUNet", "unet": "UNet",
                                          "unet_attn": "AttentionUNet"}[model])


def _assert_plain(value, where="checkpoint") -> None:
    """Only tensors and plain Python in a checkpoint: no config objects (a ListConfig in the
    optimizer's betas makes torch < 2.6 refuse to load it with weights_only=True)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _assert_plain(item, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, torch.Tensor | int | float | str | bool), (
            f"{where} is a {type(value).__name__}")


def test_same_seed_gives_identical_losses(tmp_path, tiny_mnist_root):
    args = ("model=basic", "model.base_channels=8", "trainer.log_every=1")
    a, _ = run_training(tmp_path, tiny_mnist_root, *args, name="a")
    b, _ = run_training(tmp_path, tiny_mnist_root, *args, name="b")
    c, _ = run_training(tmp_path, tiny_mnist_root, *args, "seed=1", name="c")
    losses = [[r["train/loss"] for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r]
              for d in (a, b, c)]
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def _weights(run_dir: Path) -> dict:
    state = torch.load(latest_checkpoint(run_dir / "checkpoints"), weights_only=True)
    return {"model": state["model"], "ema": state["ema"]["model"],
            "opt": state["optimizer"]["state"]}


def straight_and_resumed(tmp_path: Path, data_root: Path, *args: str, stop: int = 3,
                         end: int = 6) -> tuple[Path, Path]:
    """Two runs of ``args``: one straight to ``end`` steps, one stopped at ``stop`` and
    resumed to ``end``."""
    straight, _ = run_training(tmp_path, data_root, *args, f"trainer.max_steps={end}",
                               name="straight")
    resumed, _ = run_training(tmp_path, data_root, *args, f"trainer.max_steps={stop}",
                              name="resumed")
    cfg = OmegaConf.load(resumed / "config.yaml")
    cfg.resume, cfg.trainer.max_steps = str(resumed), end
    train(cfg, resumed)
    return straight, resumed


def assert_same_state(a: Path, b: Path) -> None:
    """The newest checkpoints of two runs hold bit-identical weights, EMA and Adam state."""
    a, b = _weights(a), _weights(b)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for idx, slots in a["opt"].items():
        for key, value in slots.items():
            assert torch.equal(value, b["opt"][idx][key])


def test_resume_is_bit_exact(tmp_path, tiny_mnist_root):
    args = ("model=unet_attn", *SMALL_MODELS["unet_attn"], "model.dropout=0.1",
            "trainer.ckpt_every=3", "trainer.keep_last=0")
    straight, first = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    assert_same_state(straight, first)
    steps = [r["step"] for r in read_metrics(first / "metrics.jsonl") if "train/loss" in r]
    assert steps == [2, 3, 4, 6]


def test_loss_divergence_stops_with_one_sentence(tmp_path, tiny_mnist_root):
    with pytest.raises(TrainingError, match=r"The loss became (nan|inf) at step \d+\W.*lower "
                                            r"optimizer\.lr"):
        run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                     "optimizer.lr=1e30", "trainer.grad_clip=0", "trainer.max_steps=40",
                     "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.sample_every=0",
                     "trainer.val_every=0")


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=-5", "trainer.max_steps must be an integer >= 1; got -5."),
    ("objective.loss=l3", "objective.loss must be one of mse, l1, huber"),
    ("model.in_channels=3", "model.in_channels is 3 but data mnist has 1 channel"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1"),
    ("model.base_channels=-1", "model.base_channels"),
    ("model=unet_attn model.attention_resolutions=[16]",
     "model.attention_resolutions must be feature-map sizes of this network, a subset of "
     "[28, 14, 7] for image_size=28"),
    ("scheduler.beta_schedule=quadratic", "scheduler.beta_schedule must be one of linear"),
])
def test_bad_values_name_the_key(tmp_path, tiny_mnist_root, override, message):
    overrides = override.split() if override.startswith("model=") else ["model=basic", override]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")
                       .replace("[", r"\[")):
        run_training(tmp_path, tiny_mnist_root, *overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_deterministic_turns_on_deterministic_kernels(tmp_path, tiny_mnist_root):
    """trainer.deterministic=true is what makes a CUDA resume bit-exact (tests/test_cuda.py)."""
    try:
        run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                     "trainer.deterministic=true", "trainer.max_steps=2")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                 "trainer.max_steps=2", name="default")
    assert not torch.are_deterministic_algorithms_enabled()
