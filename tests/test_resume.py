"""What a resume keeps and what it changes: the overrides a user gives win over the
checkpoint's settings, checkpoints from another device load, interrupted saves are cleaned
up, a diverging loss stops the run before it writes a checkpoint, and checkpoint errors say
what really went wrong."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.train import train
from diffusion.errors import TrainingError
from diffusion.runs.folder import create_run_dir
from diffusion.training import checkpoint as ckpt
from diffusion.training.loggers import read_metrics
from diffusion.training.trainer import Trainer
from test_train import run_training

TINY = ("model=basic", "model.base_channels=8", "trainer.sample_every=0",
        "trainer.val_every=0", "trainer.log_every=1")


def _resume(run: Path, **changes) -> dict:
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.resume = str(run)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return train(cfg, run)


def test_overrides_on_resume_win_and_are_recorded(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, *TINY, "lr_scheduler.warmup_steps=10")
    new = {"optimizer.lr": 1e-3, "optimizer.weight_decay": 0.01, "optimizer.betas": [0.8, 0.9],
           "lr_scheduler.warmup_steps": 20, "trainer.max_steps": 6, "trainer.grad_clip": 0.5,
           "trainer.ema_decay": 0.5}
    captured = {}
    original = Trainer.fit

    def fit(self):
        captured.update(group=dict(self.optimizer.param_groups[0]), decay=self.ema.decay,
                        clip=self.cfg.grad_clip, step=self.step)
        return original(self)

    Trainer.fit = fit
    try:
        _resume(run, **new)
    finally:
        Trainer.fit = original
    group = captured["group"]
    assert captured["step"] == 4
    assert group["initial_lr"] == 1e-3 and group["weight_decay"] == 0.01
    assert tuple(group["betas"]) == (0.8, 0.9)
    assert group["lr"] == pytest.approx(1e-3 * 5 / 20)  # warm-up (step + 1) / 20 at step 4
    assert captured["decay"] == 0.5 and captured["clip"] == 0.5
    lrs = {r["step"]: r["train/lr"] for r in read_metrics(run / "metrics.jsonl")}
    assert lrs[4] == pytest.approx(2e-4 * 5 / 10)  # before the resume: the old rate
    assert lrs[6] == pytest.approx(1e-3 * 7 / 20)  # after: the new rate and warm-up
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 4 and record["checkpoint"] == "step_00000004.pt"
    assert record["changed"]["optimizer.lr"] == {"old": 2e-4, "new": 1e-3}
    assert record["changed"]["trainer.max_steps"] == {"old": 4, "new": 6}
    assert set(record["changed"]) == set(new)
    assert OmegaConf.load(run / "config.yaml").optimizer.lr == 1e-3


def test_checkpoint_from_another_device_resumes_here(tmp_path, tiny_mnist_root, monkeypatch):
    """A checkpoint is read onto the CPU and only then moved: loading it onto the training
    device would hand torch.set_rng_state a device tensor. The trainer's device is made
    ``meta`` to show that nothing is loaded onto it (the CPU stands in for CUDA here)."""
    run, _ = run_training(tmp_path, tiny_mnist_root, *TINY, "trainer.max_steps=2")
    calls = []
    load = ckpt.load

    def spy(path, map_location="cpu"):
        state = load(path, map_location=map_location)
        calls.append({k: v.device for k, v in state["rng"].items() if torch.is_tensor(v)})
        return state

    monkeypatch.setattr(ckpt, "load", spy)
    original_resume = Trainer.resume

    def resume_on_meta(self, path=None):
        self.device = torch.device("meta")  # what the old code mapped the checkpoint onto
        try:
            return original_resume(self, path)
        finally:
            self.device = torch.device("cpu")

    monkeypatch.setattr(Trainer, "resume", resume_on_meta)
    _resume(run, **{"trainer.max_steps": 4})
    assert calls and all(d.type == "cpu" for d in calls[0].values())
    assert ckpt.step_of(ckpt.latest_checkpoint(run / "checkpoints")) == 4


def test_interrupted_saves_are_removed_on_start_and_resume(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, *TINY)
    stale = [run / "checkpoints" / ".step_00000006.pt.k2j3.tmp",
             run / "checkpoints" / ".best.pt.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = run / "checkpoints" / "notes.tmp"  # not a checkpoint temporary: left alone
    keep.write_text("mine")
    _resume(run, **{"trainer.max_steps": 6})
    assert not any(p.exists() for p in stale) and keep.exists()
    fresh = tmp_path / "fresh" / "checkpoints"
    fresh.mkdir(parents=True)
    (fresh / ".step_00000002.pt.a1.tmp").write_bytes(b"x")
    run_training(tmp_path, tiny_mnist_root, *TINY, name="fresh")
    assert not list(fresh.glob("*.tmp"))


def _blow_up_after(step: int, factor: float):
    """Trainer.train_step whose loss is scaled by ``factor`` from optimizer step ``step`` on:
    a logged loss that rises to about 1e33 while staying finite, as a diverging run's does."""
    original = Trainer.train_step

    def train_step(self, batches):
        before = self.step
        loss, grad_norm, waited = original(self, batches)
        return (loss * factor if before >= step else loss), grad_norm, waited

    return train_step


def test_a_finite_loss_far_above_its_median_stops_the_run(tmp_path, tiny_mnist_root,
                                                          monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", _blow_up_after(8, 1e33))
    with pytest.raises(TrainingError) as info:
        run_training(tmp_path, tiny_mnist_root, *TINY, "trainer.max_steps=20",
                     "trainer.ckpt_every=3", "trainer.keep_last=0")
    message = str(info.value)
    assert message.startswith("The loss rose to ")
    assert "times its running median" in message and "at step 9;" in message
    last_good = tmp_path / "run" / "checkpoints" / "step_00000006.pt"
    assert f"the last good checkpoint is {last_good}" in message
    assert "resume from it" in message
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step_00000003.pt", "step_00000006.pt"]  # nothing written from the diverged state
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert max(losses) < 10  # the diverged value was never logged as a normal step


def test_divergence_before_any_checkpoint_does_not_advise_resuming(tmp_path, tiny_mnist_root,
                                                                   monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", _blow_up_after(5, 1e6))
    with pytest.raises(TrainingError) as info:
        run_training(tmp_path, tiny_mnist_root, *TINY, "trainer.max_steps=20",
                     "trainer.ckpt_every=0")
    assert "before any checkpoint was written" in str(info.value)
    assert "start the run again" in str(info.value) and "resume" not in str(info.value)


def test_divergence_check_can_be_turned_off(tmp_path, tiny_mnist_root, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", _blow_up_after(5, 1e6))
    _, summary = run_training(tmp_path, tiny_mnist_root, *TINY, "trainer.max_steps=8",
                              "trainer.divergence_factor=0")
    assert summary["step"] == 8


@pytest.mark.parametrize(("error", "says", "not_says"), [
    (PermissionError(13, "Permission denied"), "(permission denied): check the file's "
                                               "permissions", "delete it"),
    (MemoryError(), "Not enough memory to load checkpoint", "delete it"),
    (RuntimeError("PytorchStreamReader failed reading zip archive"), "is corrupt or not a "
     "diffusion checkpoint (RuntimeError); delete it", "memory"),
])
def test_checkpoint_errors_say_what_failed(tmp_path, monkeypatch, error, says, not_says):
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(b"x")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    assert says in str(info.value) and not_says not in str(info.value)


def test_run_folders_are_exclusive_under_concurrency(tmp_path):
    target = tmp_path / "runs" / "name" / "2026-01-01_00-00-00"
    made, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(create_run_dir(target))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8
    assert sorted(p.name for p in made) == sorted(
        [target.name, *(f"{target.name}_{i}" for i in range(1, 8))])
