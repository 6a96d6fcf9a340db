"""The loggers researchers use, one or several at once (``logger=[wandb,tensorboard,csv]``):
each gets the same metrics, and one that cannot start is named in one line while training
goes on."""

from __future__ import annotations

import csv
import logging
import sys

import pytest

from diffusion.errors import ConfigError
from diffusion.training.loggers import read_metrics
from test_train import run_training
from test_train_errors import run_main

SMALL = ["model=basic", "model.base_channels=8", "trainer.log_every=1"]


def test_tensorboard_and_csv_get_what_metrics_jsonl_gets(tmp_path, tiny_mnist_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, "logger=[tensorboard,csv]")
    records = [r for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    with (run / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records] == [1, 2, 3, 4]
    assert [float(r["train/loss"]) for r in rows] == [r["train/loss"] for r in records]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [r["step"] for r in records]
    assert [e.value for e in scalars] == pytest.approx([r["train/loss"] for r in records])
    tags = events.Tags()
    assert "samples" in tags["images"] and "config/text_summary" in tags["tensors"]


def test_csv_holds_each_step_once_after_a_resume(tmp_path, tiny_mnist_root):
    from omegaconf import OmegaConf

    from diffusion.commands.train import train

    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, "logger=csv",
                          "trainer.ckpt_every=2", "trainer.max_steps=3")
    cfg = OmegaConf.load(run / "config.yaml")
    (run / "checkpoints" / "step_00000003.pt").unlink()  # resumes from step 2
    cfg.resume, cfg.trainer.max_steps = str(run), 4
    train(cfg, run)
    with (run / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert steps == [1, 2, 3, 4]


def test_a_logger_that_cannot_start_is_named_and_training_goes_on(tmp_path, tiny_mnist_root,
                                                                  monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    monkeypatch.setattr(logging.getLogger("diffusion.config.build"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="diffusion.config.build"):
        run, summary = run_training(tmp_path, tiny_mnist_root, *SMALL,
                                    "logger=[tensorboard,csv]")
    assert summary["step"] == 4 and (run / "metrics.csv").is_file()
    assert ("logger tensorboard could not start (tensorboard is not installed (pip install -e "
            "'.[tensorboard]')); training goes on without it.") in caplog.text


def test_a_wrong_logger_setting_or_name_is_refused(tmp_path, tiny_mnist_root, capsys):
    with pytest.raises(ConfigError, match="logger.mode must be one of auto, online, offline"):
        run_training(tmp_path, tiny_mnist_root, *SMALL, "logger=wandb",
                     "logger.wandb.mode=sometimes")
    code, last = run_main(["logger=[csv,nope]", f"paths.runs_dir={tmp_path / 'runs'}"], capsys)
    assert (code, last) == (1, "error: logger=nope is not an option of logger: choose one of "
                               "csv, none, tensorboard, wandb.")
