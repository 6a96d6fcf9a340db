"""A tiny beta-schedule sweep with failing jobs, evaluated and reported from its folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from diffusion.commands.evaluate import evaluate
from diffusion.reporting.sweeps import find_jobs, write_report
from hydra_utils import compose_config
from test_records import absolute_paths


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_mnist_root):
    """``diffusion.train -m optimizer.lr=0.001,1e30 scheduler.beta_schedule=linear,cosine`` on
    tiny data: jobs 0 and 1 complete, jobs 2 and 3 diverge (a NaN loss)."""
    from diffusion.commands.train import main

    root = tmp_path_factory.mktemp("sweep")
    argv = sys.argv
    sys.argv = ["train", "-m", "trainer=debug", "sampler.steps=2", "logger=none",
                f"paths.data_dir={tiny_mnist_root}",
                "data.batch_size=8", "data.num_workers=0", "model=basic",
                "model.base_channels=8", f"hydra.sweep.dir={root / 'multirun'}",
                "trainer.grad_clip=0", "trainer.log_every=1", "optimizer.lr=0.001,1e30",
                "scheduler.beta_schedule=linear,cosine"]
    try:
        GlobalHydra.instance().clear()
        with pytest.raises(SystemExit):  # the sweep fails after its last job
            main()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    cache = root / "features"
    for job in ("0", "1"):
        evaluate(compose_config([f"run={root / 'multirun' / job}", "n=8", "sampler.steps=[2,4]",
                                 f"metrics.cache_dir={cache}", "metrics.feature_epochs=5",
                                 "metrics.kid_subset_size=8", "batch_size=8", "device=cpu"],
                                config_name="evaluate"))
    return root / "multirun"


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(sweep):
    status = {job: json.loads((sweep / job / "status.json").read_text()) for job in "0123"}
    assert status["0"]["status"] == status["1"]["status"] == "completed"
    for job in "23":
        assert status[job]["status"] == "failed" and "nan" in status[job]["error"]


def test_report_from_run_folders_alone(sweep, tmp_path, monkeypatch):
    for var in ("DIFFUSION_DATA", "DIFFUSION_RUNS"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "experiments" / "tiny"
    out.mkdir(parents=True)
    (out / "notes.md").write_text("Budget: four steps.")
    readme = write_report([sweep], out).read_text()
    assert readme.startswith("# tiny\n\nBudget: four steps.")
    assert "python -m diffusion.train -m " in readme
    assert "optimizer.lr=0.001,1e30 scheduler.beta_schedule=linear,cosine" in readme
    assert "python -m diffusion.evaluate run=" in readme and "Git commit " in readme
    header = next(line for line in readme.splitlines() if line.startswith("| job"))
    assert "FID ddim-2 (n=8)" in header and "FID ddim-4 (n=8)" in header
    assert "train loss" in header and "val loss" in header and "images/s" in header
    rows = [line for line in readme.splitlines() if line.startswith("| ")]
    assert rows[2].startswith(
        "| 0 | `optimizer.lr=0.001` `scheduler.beta_schedule=linear` | completed |")
    assert rows[5].startswith("| 3 | `optimizer.lr=1e+30` `scheduler.beta_schedule=cosine` | "
                              "failed: ")
    assert rows[-1].startswith("| data floor |")
    for png in ("loss_curves.png", "fid_vs_steps.png", "samples.png", "forward_process.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in readme
    again = write_report([sweep], out).read_text()
    assert again == readme  # regenerated from the same folders, the same report
    # folders outside the current one and the variables become placeholders
    assert absolute_paths(readme) == []
    runs = f"<runs>/{sweep.parent.name}/multirun"
    assert "'paths.data_dir=<data>'" in readme
    assert (f"python -m diffusion.evaluate run={runs}/0 "
            f"checkpoint={runs}/0/checkpoints/step_00000004.pt n=8 sampler=ddim") in readme
    assert f"python -m diffusion.report sweep={runs} out=<out>" in readme


def test_report_paths_relative_to_the_current_folder_or_the_variables(
        sweep, tmp_path, tiny_mnist_root, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(tiny_mnist_root))
    monkeypatch.delenv("DIFFUSION_RUNS", raising=False)
    monkeypatch.chdir(sweep.parent)
    readme = write_report([sweep / "0", sweep / "1"], tmp_path / "both").read_text()
    assert absolute_paths(readme) == []
    assert "paths.data_dir=$DIFFUSION_DATA " in readme
    assert ("python -m diffusion.evaluate run=multirun/1 "
            "checkpoint=multirun/1/checkpoints/step_00000004.pt n=8 sampler=ddim") in readme
    assert "python -m diffusion.report sweep=[multirun/0,multirun/1] out=<out>" in readme
    monkeypatch.setenv("DIFFUSION_RUNS", str(sweep))
    readme = write_report([sweep], Path("out")).read_text()
    assert ("python -m diffusion.evaluate run=$DIFFUSION_RUNS/0 "
            "checkpoint=$DIFFUSION_RUNS/0/checkpoints/step_00000004.pt n=8") in readme
    assert "python -m diffusion.report sweep=$DIFFUSION_RUNS out=out" in readme


def test_jobs_from_several_folders_are_labelled_by_what_differs(sweep):
    jobs = find_jobs([sweep / "0", sweep / "1"])
    assert [j.label for j in jobs] == ["beta_schedule=linear", "beta_schedule=cosine"]
    assert all(j.evals and j.last("train/loss") is not None for j in jobs)
