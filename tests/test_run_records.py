"""A run's records stay true through faults: the launch's last step always leaves a
checkpoint, a resume keeps no record of the steps it trains again, a damaged line is skipped
when a killed write left it and named when it is not the last, and a damaged eval.json stops
an evaluation before any scoring, the file untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from diffusion.errors import RunError
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.training.checkpoint import list_checkpoints
from diffusion.training.loggers import read_metrics
from test_train import run_training

SMALL = ("model=basic", "model.base_channels=8", "trainer.sample_every=0", "trainer.val_every=0",
         "trainer.log_every=1")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=240, env=env)


def _train_steps(run) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]


def test_checkpoints_off_still_leave_the_last_step(tmp_path, tiny_mnist_root):
    run, summary = run_training(tmp_path, tiny_mnist_root, *SMALL, "trainer.ckpt_every=0")
    assert summary["step"] == 4
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004.pt"]


def test_a_resume_drops_the_records_of_the_steps_it_trains_again(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL)  # checkpoints at 2 and 4
    (run / "checkpoints" / "step_00000004.pt").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')  # the write a kill cut short
    result = _cli("diffusion.train", f"resume={run}", "trainer.max_steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 once, from the resume
    assert all(line.strip().startswith("{") and line.strip().endswith("}")
               for line in (run / "metrics.jsonl").read_text().splitlines())


def test_a_damaged_line_before_the_last_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
    with pytest.raises(RunError, match=rf"^{path} line 2 is damaged \(not JSON\): delete that "
                                       r"line or restore the file from a copy.$"):
        read_metrics(path)
    (tmp_path / "config.yaml").write_text("data:\n  name: mnist\n")
    result = _cli("diffusion.visualize", "losses", f"run={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path} line 2 is damaged")


def test_a_damaged_eval_json_stops_evaluate_before_scoring(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL)
    damaged = b'{"entries": {"sampler=ddim steps=2'
    (run / "eval.json").write_bytes(damaged)
    before = hashlib.sha256(damaged).hexdigest()
    result = _cli("diffusion.evaluate", f"run={run}", "n=4", "sampler.steps=2",
                  f"data_root={tiny_mnist_root}", "metrics.reference_n=8")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'eval.json'} is damaged (not the JSON of a run's evaluations): move it "
        "aside (its results are lost) or restore it from a copy, then evaluate again.")
    assert hashlib.sha256((run / "eval.json").read_bytes()).hexdigest() == before
    assert "feature" not in result.stdout.lower()  # stopped before the feature network


def _snapshot(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("edit,message", [
    (lambda text: text + "model: [unclosed\n", "config.yaml no longer reads as YAML"),
    (lambda text: text.replace("base_channels: 8", "base_channels: 16"),
     "does not hold the network that config.yaml describes"),
], ids=["not-yaml", "another-width"])
def test_an_edited_config_yaml_is_named_and_the_run_kept(tmp_path, tiny_mnist_root, edit,
                                                        message):
    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL)
    config = run / "config.yaml"
    config.write_text(edit(config.read_text()))
    before = _snapshot(run)
    for command in (["diffusion.train", f"resume={run}", "trainer.max_steps=6"],
                    ["diffusion.sample", f"run={run}", "n=2", "sampler.steps=2"]):
        result = _cli(*command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
        assert _snapshot(run) == before, f"{command[0]} changed the run"


def test_a_checkpoint_of_another_network_is_named(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, name="narrow")
    wide, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, "model.base_channels=16",
                           name="wide")
    other = wide / "checkpoints" / "step_00000004.pt"
    result = _cli("diffusion.sample", f"run={run}", f"checkpoint={other}", "n=2",
                  "sampler.steps=2")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {other} does not hold the network that config.yaml describes (")


def test_a_classifier_run_is_not_a_diffusion_run(tmp_path):
    (tmp_path / "config.yaml").write_text("classifier_net:\n  _target_: x.Y\n")
    with pytest.raises(RunError, match=rf"^run={tmp_path} is not a diffusion run \(its "
                                       r"config.yaml has no model and scheduler; a classifier "
                                       r"run goes to classifier=\)"):
        DiffusionPipeline.from_run(tmp_path)


def test_a_run_folder_naming_an_earlier_target_resumes(tmp_path, tiny_mnist_root):
    """Run folders of earlier versions name ``diffusion.objectives.Objective``; the class
    lives in ``diffusion.training.objectives`` now (``config.legacy.MOVED_TARGETS``)."""
    run, _ = run_training(tmp_path, tiny_mnist_root, *SMALL)
    config = run / "config.yaml"
    text = config.read_text()
    assert "diffusion.training.objectives.Objective" in text
    config.write_text(text.replace("diffusion.training.objectives.Objective",
                                   "diffusion.objectives.Objective"))
    result = _cli("diffusion.train", f"resume={run}", "trainer.max_steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]
