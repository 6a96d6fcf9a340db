"""Stopping a run on a signal: Ctrl-C (SIGINT), a cluster's SIGTERM or SIGUSR1 finish the step,
write a checkpoint, say how to continue in one line and exit 128 + the signal's number; the
resumed run equals one that was never stopped. A second signal stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import EVERY_STEP_LOGGED, cli_env, signal_after
from diffusion.commands.launcher import guarded
from diffusion.training.checkpoint import latest_checkpoint, list_checkpoints, step_of
from diffusion.training.interrupt import SIGNALS, StopRequest
from diffusion.training.loggers import read_metrics

TINY = [*EVERY_STEP_LOGGED, "trainer.ckpt_every=100000"]


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion.train", *args],
                          capture_output=True, text=True, timeout=240, env=cli_env())


def _interrupt(run: Path, args: list[str], signum: int, after_step: int = 3):
    """Start a long run, send ``signum`` once it has logged ``after_step``; (exit status,
    stderr)."""
    return signal_after("diffusion.train", [*args, "trainer.max_steps=100000",
                                            f"hydra.run.dir={run}"], run, signum, after_step)


def _weights(run: Path) -> dict:
    state = torch.load(latest_checkpoint(run / "checkpoints"), weights_only=True)
    return {"step": state["step"], **{f"model.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["ema"]["model"].items()}}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_step_reached_and_the_resumed_run_equals_a_straight_one(
        tmp_path, tiny_mnist_root, signum):
    args = [*TINY, f"paths.data_dir={tiny_mnist_root}"]
    run = tmp_path / "stopped"
    status, stderr = _interrupt(run, args, signum)
    name = signal.Signals(signum).name
    assert status == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    step = step_of(latest_checkpoint(run / "checkpoints"))
    assert last == (f"{name}: stopped at step {step} with a checkpoint; continue with "
                    f"python -m diffusion.train resume={run}")
    assert [step_of(p) for p in list_checkpoints(run / "checkpoints")] == [step]
    assert json.loads((run / "status.json").read_text()) == {"status": "interrupted",
                                                              "signal": name}
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert logged[-1] == step >= 3

    end = step + 3
    resumed = _train(f"resume={run}", f"trainer.max_steps={end}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "status.json").read_text()) == {"status": "completed"}
    straight = tmp_path / "straight"
    result = _train(*args, f"trainer.max_steps={end}", f"hydra.run.dir={straight}")
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = _weights(straight), _weights(run)
    assert a["step"] == b["step"] == end
    for key, value in a.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key])), key
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, end + 1))


def test_the_first_signal_asks_for_a_stop_and_the_second_stops_at_once():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with StopRequest() as stop:
        assert stop.signal is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_ctrl_c_at_once_ends_in_one_line_and_status_130(capsys):
    def work():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        guarded(work)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
