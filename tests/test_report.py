"""A tiny beta-schedule sweep with failing jobs, evaluated and reported from its folders."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from diffusion.commands.evaluate import main as evaluate_main
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
    # every completed job scored under one protocol by one command (the failed ones skipped)
    sys.argv = ["evaluate", f"sweep={root / 'multirun'}", "n=8", "sampler.steps=2,4",
                f"metrics.cache_dir={root / 'features'}", "metrics.feature_epochs=5",
                "metrics.kid_subset_size=8", "batch_size=8", "device=cpu"]
    try:
        GlobalHydra.instance().clear()
        evaluate_main()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return root / "multirun"


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(sweep):
    status = {job: json.loads((sweep / job / "status.json").read_text()) for job in "0123"}
    assert status["0"]["status"] == status["1"]["status"] == "completed"
    for job in "23":
        assert status[job]["status"] == "failed" and "nan" in status[job]["error"]
    # evaluate sweep= scored the completed jobs alone, each into its own eval.json
    assert [(sweep / job / "eval.json").is_file() for job in "0123"] == [True, True, False, False]


def test_report_from_run_folders_alone(sweep, tmp_path, monkeypatch):
    for var in ("DIFFUSION_DATA", "DIFFUSION_RUNS"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "experiments" / "tiny"
    out.mkdir(parents=True)
    (out / "notes.md").write_text("Budget: four steps.")
    readme = write_report([sweep], out).read_text()
    # notes not yet tied to these numbers follow them, marked; tied, they lead
    digest = readme.rstrip().splitlines()[-1]
    assert re.fullmatch(r"<!-- results [0-9a-f]{12} -->", digest)
    assert readme.index("## Notes written for other results") > readme.index("### Training")
    assert readme.split("## Notes written for other results", 1)[1].count("Budget: four") == 1
    (out / "notes.md").write_text(f"{digest}\nBudget: four steps.")
    readme = write_report([sweep], out).read_text()
    assert readme.startswith("# tiny\n\nBudget: four steps.")
    assert "Notes written for other results" not in readme
    assert "python -m diffusion.train -m " in readme
    assert "optimizer.lr=0.001,1e30 scheduler.beta_schedule=linear,cosine" in readme
    assert "python -m diffusion.evaluate run=" in readme and "Git commit " in readme
    # the quality table leads; the losses follow, marked as not comparable across schedules
    assert readme.index("### Sample quality") < readme.index("### Training")
    quality, training = (line for line in readme.splitlines() if line.startswith("| job"))
    assert quality == "| job | overrides | FID ddim-2 (n=8) | FID ddim-4 (n=8) |"
    assert training == ("| job | overrides | status | train loss* | val loss* | wall time | "
                        "images/s |")
    assert "These jobs differ in beta schedule, which weight the loss differently" in readme
    rows = [line for line in readme.splitlines() if line.startswith("| ")]
    assert rows[2].startswith("| 0 | `optimizer.lr=0.001` `scheduler.beta_schedule=linear` | ")
    assert rows[6].startswith("| data floor |")
    assert rows[9].startswith(
        "| 0 | `optimizer.lr=0.001` `scheduler.beta_schedule=linear` | completed |")
    assert rows[12].startswith("| 3 | `optimizer.lr=1e+30` `scheduler.beta_schedule=cosine` | "
                               "failed: ")
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


def test_evaluate_sweep_refuses_a_run_as_well_or_a_sweep_with_nothing_completed(sweep,
                                                                                 tmp_path):
    from diffusion.commands.evaluate import evaluate_jobs
    from diffusion.errors import ConfigError

    cfg = compose_config([f"sweep={sweep}", f"run={sweep / '0'}"], config_name="evaluate")
    with pytest.raises(ConfigError, match=rf"^run={sweep / '0'} and sweep={sweep}: pass one"):
        evaluate_jobs(cfg)
    failed = tmp_path / "failed-sweep"
    failed.mkdir()
    for job in ("2", "3"):  # the diverged jobs alone
        (failed / job).symlink_to(sweep / job)
    cfg = compose_config([f"sweep={failed}"], config_name="evaluate")
    with pytest.raises(ConfigError, match=rf"^No job under sweep={failed} completed, so there "
                                          "is nothing to evaluate"):
        evaluate_jobs(cfg)
