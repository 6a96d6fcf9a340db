"""Faults a long run meets: SIGKILLs at random moments, runs started in the same second, a
resume that cannot work. Each runs the real command line in its own process."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cli_helpers import TINY, cli_env
from diffusion.training.checkpoint import latest_checkpoint, list_checkpoints, step_of
from diffusion.training.loggers import read_metrics


def _train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffusion.train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env())


def _train_to_end(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion.train", *args],
                          capture_output=True, text=True, timeout=timeout, env=cli_env())


def _newest_step(run: Path) -> int:
    newest = latest_checkpoint(run / "checkpoints")
    return -1 if newest is None else step_of(newest)


def _kill_after_step(proc: subprocess.Popen, run: Path, step: int, rng: random.Random,
                     timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` a random moment after it has checkpointed ``step`` (so the kill lands
    in training, often mid-save); False if it finished first."""
    deadline = time.monotonic() + timeout
    while _newest_step(run) < step:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.05))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _state(run: Path) -> dict:
    state = torch.load(latest_checkpoint(run / "checkpoints"), weights_only=True)
    return {"model": state["model"], "ema": state["ema"]["model"],
            "optimizer": state["optimizer"]["state"], "step": state["step"]}


def test_random_sigkills_resume_to_bit_identical_weights(tmp_path, tiny_mnist_root):
    args = [*TINY, f"paths.data_dir={tiny_mnist_root}", "trainer.max_steps=40",
            "trainer.ckpt_every=1", "trainer.log_every=1", "trainer.sample_every=0",
            "trainer.val_every=0", "trainer.keep_last=2"]
    straight = tmp_path / "straight"
    result = _train_to_end(*args, f"hydra.run.dir={straight}")
    assert result.returncode == 0, result.stderr[-2000:]

    # Kill points far apart, so that no fast machine runs through one before the kill lands.
    run, rng, kills = tmp_path / "killed", random.Random(0), 0
    targets = [base + rng.randrange(4) for base in range(3, 32, 7)]  # 5 kills by step 34
    proc = _train(*args, f"hydra.run.dir={run}")
    for target in targets:
        if not _kill_after_step(proc, run, max(target, _newest_step(run) + 1), rng):
            break  # the run finished before this kill
        kills += 1
        proc = _train(f"resume={run}")
    proc.wait(timeout=240)
    assert kills == 5, f"only {kills} kills landed before the run finished"
    assert proc.returncode == 0, proc.stderr.read()[-2000:]

    a, b = _state(straight), _state(run)
    assert a["step"] == b["step"] == 40
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after {kills} kills"
    for index, slots in a["optimizer"].items():
        for key, value in slots.items():
            assert torch.equal(value, b["optimizer"][index][key])
    assert not list((run / "checkpoints").glob("*.tmp")), "a killed save left its temporary"
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps[-1] == 40 and sorted(set(steps)) == list(range(1, 41))


def test_runs_started_together_get_their_own_folders(tmp_path, tiny_mnist_root):
    runs = tmp_path / "runs"
    common = [*TINY, f"paths.data_dir={tiny_mnist_root}", f"paths.runs_dir={runs}",
              "name=same", "trainer.log_every=1"]
    procs = [_train(*common, f"seed={seed}") for seed in (0, 1, 2)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-2000:]
    folders = sorted((runs / "same").iterdir())
    assert len(folders) == 3
    seeds = set()
    for folder in folders:
        config = (folder / "config.yaml").read_text()
        seed = int(next(line for line in config.splitlines() if line.startswith("seed:"))
                   .split(":")[1])
        seeds.add(seed)
        steps = [r["step"] for r in read_metrics(folder / "metrics.jsonl") if "train/loss" in r]
        assert steps == [1, 2, 3, 4], f"{folder.name} holds another run's records: {steps}"
    assert seeds == {0, 1, 2}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_resume_with_another_architecture_leaves_the_run_intact(tmp_path, tiny_mnist_root):
    run = tmp_path / "run"
    result = _train_to_end(*TINY, f"paths.data_dir={tiny_mnist_root}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    before = _snapshot(run)
    result = _train_to_end(f"resume={run}", "model.base_channels=16", "trainer.max_steps=8")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: resume={run} cannot change model.base_channels (8 -> 16)")
    assert _snapshot(run) == before
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step_00000002.pt", "step_00000004.pt"]
