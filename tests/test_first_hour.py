"""The first minutes of a run: a line saying what trains where, the loss within the first
steps, the time per step and the estimate to ``max_steps`` after ten, a word on a recipe that
fits when a CPU would take hours, and a time budget that is looked at every step."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys

import pytest

from cli_helpers import TINY, cli_env, signal_after
from diffusion.training.loggers import read_metrics
from diffusion.training.trainer import EARLY_LOG_STEPS, format_duration
from test_train import run_training


@pytest.fixture
def caplog(caplog, monkeypatch):
    """``caplog`` with the trainer's logger enabled (an in-process Hydra command earlier in the
    session may have disabled the loggers that existed then)."""
    monkeypatch.setattr(logging.getLogger("diffusion.training.trainer"), "disabled", False)
    caplog.set_level(logging.INFO, logger="diffusion.training.trainer")
    return caplog


def test_the_start_banner_and_the_estimate_say_what_trains_where(tmp_path, tiny_mnist_root,
                                                                  caplog):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "trainer.max_steps=12", "trainer.log_every=100",
                          "trainer.ckpt_every=0", "trainer.early_logs=true")
    lines = [r.getMessage() for r in caplog.records if r.name == "diffusion.training.trainer"]
    assert re.fullmatch(r"Training BasicUNet \(0\.\d\dM parameters\) on the CPU \(\d+ threads?\), "
                        r"fp32, batch 8: steps 0 -> 12\.", lines[0]), lines[0]
    eta = next(line for line in lines if "per step" in line)
    assert re.fullmatch(r"[\d.e+-]+ s per step over the first 10: about \d+ s to step 12\.", eta)
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert logged == [1, 2, 5, 10, 12]  # early steps, then the last


def test_early_logs_can_be_turned_off_and_stop_below_log_every(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "trainer.max_steps=12", "trainer.log_every=4",
                          "trainer.early_logs=false", "trainer.ckpt_every=0")
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")
            if "train/loss" in r] == [4, 8, 12]
    assert sorted(s for s in EARLY_LOG_STEPS if s < 1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500]


def test_the_time_budget_is_looked_at_every_step(tmp_path, tiny_mnist_root):
    run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                "model.base_channels=8", "trainer.max_steps=400",
                                "trainer.log_every=1000", "trainer.early_logs=false",
                                "trainer.max_minutes=0.0001")  # 6 ms: over after a step
    assert summary["stopped"] == "trainer.max_minutes=0.0001 reached"
    assert summary["step"] < 5  # not the next log step (1000), nor max_steps


def test_a_cpu_run_of_many_hours_names_the_recipe_that_fits(tmp_path, tiny_mnist_root):
    run = tmp_path / "long"
    status, _ = signal_after(
        "diffusion.train", [*TINY, f"paths.data_dir={tiny_mnist_root}", "model=unet_attn",
                            "model.base_channels=16", "model.norm_groups=4",
                            "trainer.max_steps=100000000", "trainer.sample_every=0",
                            "trainer.val_every=0", f"hydra.run.dir={run}"],
        run, signal.SIGINT, after_step=10)
    assert status == 130
    log = (run / "train.log").read_text()
    assert "This recipe is sized for a GPU. On a CPU, python -m diffusion.train " \
           "experiment=mnist_cpu" in log
    assert re.search(r"about [\d.]+ (h|days) to step 100000000\.", log)
    assert log.count("SIGINT received: stopping after this step") == 1


@pytest.mark.parametrize(("seconds", "text"), [(40, "40 s"), (720, "12 min"),
                                               (3.4 * 3600, "3.4 h"), (3 * 86400, "3.0 days")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def _losses(run) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run / "metrics.jsonl")
            if "train/loss" in r]


def test_a_rerun_reproduces_a_run_into_a_new_folder_under_runs(tmp_path, tiny_mnist_root):
    import json

    import torch

    from diffusion.training.checkpoint import latest_checkpoint

    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "diffusion.train", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=240, env=cli_env())

    first = train(*TINY, f"paths.data_dir={tiny_mnist_root}", "trainer.log_every=1")
    assert first.returncode == 0, first.stderr[-2000:]
    [source] = (tmp_path / "runs").glob("*/*")
    again = train(f"rerun={source}")
    assert again.returncode == 0, again.stderr[-2000:]
    runs = sorted((tmp_path / "runs" / source.parent.name).iterdir())
    assert len(runs) == 2 and source in runs and not (tmp_path / "outputs").exists()
    [rerun] = [r for r in runs if r != source]
    assert _losses(rerun) == _losses(source) and len(_losses(source)) == 4
    ours, theirs = (torch.load(latest_checkpoint(r / "checkpoints"), weights_only=True)
                    for r in (rerun, source))
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    env = json.loads((rerun / "env.json").read_text())
    assert env["rerun_of"] == str(source)
    assert env["job_command"] == f"python -m diffusion.train rerun={source}"

    sweep = train("-m", f"rerun={source}", "seed=0,1")  # each job records its own command
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    jobs = sorted((tmp_path / "runs" / "multirun").glob("*/[0-9]"))
    commands = [json.loads((j / "env.json").read_text())["job_command"] for j in jobs]
    assert commands == [f"python -m diffusion.train rerun={source} seed={s}" for s in (0, 1)]
    assert _losses(jobs[0]) == _losses(source) != _losses(jobs[1])

    refused = train(f"rerun={source}", "model=unet")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: rerun={source} cannot switch model=unet: a run keeps the groups it started "
        "with; override single keys (model.<key>=...) or start a new run.")


def test_a_finished_run_prints_its_grid_and_the_commands_that_sample_and_score_it(
        tmp_path, tiny_mnist_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                 "trainer.max_steps=4", "trainer.sample_every=4", "sampler=dpmpp_2m",
                 "sampler.steps=3")
    lines = capsys.readouterr().out.strip().splitlines()[-4:]
    assert lines == ["Run folder: run", "Newest grid: run/samples/step_00000004.png",
                     "Sample from it: python -m diffusion.sample run=run sampler=dpmpp_2m "
                     "sampler.steps=3 n=64",
                     "Score it (FID): python -m diffusion.evaluate run=run sampler=dpmpp_2m "
                     "sampler.steps=3 n=1000"]
    assert (tmp_path / "run/samples/step_00000004.png").is_file()
    command = lines[2].split(": ", 1)[1].split()
    done = subprocess.run([sys.executable, *command[1:], "out=grid.png"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "grid.png").is_file()
