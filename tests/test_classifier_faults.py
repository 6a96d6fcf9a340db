"""A classifier run is a run like any other: a stop signal leaves a checkpoint and a status,
``resume=`` continues it exactly, and guidance refuses a classifier that stopped early or
learned from another folder of images."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import cli_env, signal_after
from diffusion.commands.train_classifier import train_classifier
from diffusion.config.guidance import check_classifier_run
from diffusion.data.synthetic import write_shape_folder
from diffusion.errors import ConfigError
from diffusion.training.checkpoint import latest_checkpoint, list_checkpoints, step_of
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config
from test_classifier import classifier_overrides


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion.train_classifier", *args],
                          capture_output=True, text=True, timeout=240, env=cli_env())


def _state(run: Path) -> dict:
    state = torch.load(latest_checkpoint(run / "checkpoints"), weights_only=True)
    return {"step": state["step"], **{f"model.{k}": v for k, v in state["model"].items()},
            "generator": state["generator"]}


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".writer.lock"}


def test_a_stopped_classifier_is_refused_by_guidance_then_resumes_to_a_straight_run(
        tmp_path, tiny_mnist_root):
    args = classifier_overrides(tiny_mnist_root, "log_every=1", "eval_every=0")
    run = tmp_path / "stopped"
    status, stderr = signal_after("diffusion.train_classifier",
                                  [*args, "steps=100000", f"hydra.run.dir={run}"], run,
                                  signal.SIGINT)
    assert status == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    step = step_of(latest_checkpoint(run / "checkpoints"))
    assert stderr.strip().splitlines()[-1] == (
        f"SIGINT: stopped at step {step} of 100000 with a checkpoint; continue with "
        f"python -m diffusion.train_classifier resume={run}")
    assert json.loads((run / "status.json").read_text()) == {"status": "interrupted",
                                                              "signal": "SIGINT"}
    assert not (run / "accuracy.json").exists()

    own = OmegaConf.load(run / "config.yaml")  # a run of the very same data and noise
    with pytest.raises(ConfigError, match=rf"^classifier={run} stopped at step {step} of "
                                          rf"100000 \(interrupted\): continue it with python "
                                          rf"-m diffusion.train_classifier resume={run}, or"):
        check_classifier_run(str(run), "r", own)

    end = step + 3
    resumed = _command(f"resume={run}", f"steps={end}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "status.json").read_text()) == {"status": "completed"}
    assert json.loads((run / "accuracy.json").read_text())["step"] == end
    check_classifier_run(str(run), "r", OmegaConf.load(run / "config.yaml"))
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert logged == list(range(1, end + 1))

    straight = tmp_path / "straight"
    done = _command(*args, f"steps={end}", f"hydra.run.dir={straight}")
    assert done.returncode == 0, done.stderr[-2000:]
    ours, theirs = _state(run), _state(straight)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) if torch.is_tensor(ours[k])
               else ours[k] == theirs[k] for k in ours)

    again = _command(f"resume={run}")  # nothing left to do
    assert again.returncode == 0 and f"trained to step {end} already" in again.stdout


@pytest.fixture(scope="module")
def short_classifier(tmp_path_factory, tiny_mnist_root) -> Path:
    run = tmp_path_factory.mktemp("short")
    cfg = compose_config(classifier_overrides(tiny_mnist_root, "steps=2", "eval_every=0"),
                         config_name="train_classifier")
    train_classifier(cfg, run)
    return run


@pytest.mark.parametrize(("args", "message"), [
    (["lr=0.1"], r"^lr=0.1: a resume continues the classifier as it was trained, so only "
                 r"steps, progress, log_every, eval_every, device may change: drop it"),
    (["+foo=1"], r"^\+foo=1: a resume continues the classifier"),
    (["data=fashion_mnist"], r"^data=fashion_mnist: a resume continues"),
], ids=["lr", "new-key", "group"])
def test_a_resume_that_would_change_what_it_learns_is_refused(short_classifier, args, message):
    before = _checksums(short_classifier)
    result = _command(f"resume={short_classifier}", "steps=5", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ")
    assert re.search(message, error[len("error: "):]), error
    assert _checksums(short_classifier) == before


def test_a_diffusion_run_or_an_empty_folder_is_not_resumed_as_a_classifier(tmp_path):
    run = tmp_path / "diffusion-run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  _target_: x\n")
    result = _command(f"resume={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: resume={run} is a diffusion run, not a classifier "
                                     f"run: continue it with python -m diffusion.train "
                                     f"resume={run}.")
    result = _command(f"resume={tmp_path / 'nothing'}")
    assert result.returncode == 1 and "is not a run folder" in result.stderr


def test_a_classifier_of_another_image_folder_is_refused(tmp_path):
    ours = write_shape_folder(tmp_path / "ours", n=12)
    other = write_shape_folder(tmp_path / "other", n=12, seed=1)  # same three classes
    run = tmp_path / "classifier"
    cfg = compose_config(classifier_overrides(tmp_path, "data=image_folder", f"data.root={ours}",
                                              "data.image_size=16", "steps=2", "eval_every=0",
                                              "batch_size=4"), config_name="train_classifier")
    train_classifier(cfg, run)
    assert json.loads((run / "data.json").read_text())["content_key"].startswith("image_folder@")
    diffusion_cfg = OmegaConf.load(run / "config.yaml")
    check_classifier_run(str(run), "r", diffusion_cfg)  # the same folder: accepted
    diffusion_cfg.data.root = str(other)
    with pytest.raises(ConfigError, match=rf"^classifier={run} was trained on other images "
                                          rf"than run r \(data.root={other}, or its files "
                                          r"changed since\): train the classifier on the run's "
                                          r"folder"):
        check_classifier_run(str(run), "r", diffusion_cfg)
    assert [step_of(p) for p in list_checkpoints(run / "checkpoints")] == [2]
