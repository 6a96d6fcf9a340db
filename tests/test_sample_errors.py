"""Bad input to ``diffusion.sample``, ``diffusion.evaluate`` and the pipeline: one sentence that
names the key and the fix, exit status 1, no traceback, and nothing sampled, trained or
written first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from diffusion.sampling.checks import SAMPLERS
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDPMScheduler
from test_train import run_training

ALL_SAMPLERS = ", ".join(sorted([*SAMPLERS, "run"]))  # run: the run's own

SAMPLE_KEYS = ("batch_size, chain, chain_frames, chain_rows, checkpoint, classifier, "
               "classifier_scale, compile, control_image, control_scale, device, "
               "guidance_rescale, guidance_scale, labels, "
               "low_res_level, n, out, precision, run, sampler, save_tensors, seed, upsample")
STEPS_RANGE = ("sampler.steps must be an integer from 1 to 1000 (the model's "
               "num_train_timesteps)")
MOVED = ("is now sampler.{key}: the sampler is a config group, e.g. sampler=ddim "
         "sampler.steps=50 (conf/sampler/ holds one file per sampler).")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_mnist_root):
    """A 4-step unconditional run and a 4-step class-conditional one (10 classes)."""
    tmp = tmp_path_factory.mktemp("runs")
    small = ("model=basic", "model.base_channels=8", "trainer.sample_every=0",
             "trainer.val_every=0")
    plain, _ = run_training(tmp, tiny_mnist_root, *small, name="plain")
    conditional, _ = run_training(tmp, tiny_mnist_root, *small, "model.num_classes=10",
                                  name="conditional")
    return {"plain": plain, "conditional": conditional}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=240, env=env)


def _fails_with(result: subprocess.CompletedProcess, last_line: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert result.stderr.strip().splitlines()[-1] == f"error: {last_line}"


# (arguments after run=, the last line of stderr); run=plain unless the case names the run
SAMPLE_CASES = {
    "steps-0": (["sampler.steps=0", "n=2"], f"{STEPS_RANGE}; got 0."),
    "steps-above-T": (["sampler.steps=1001"], f"{STEPS_RANGE}; got 1001."),
    "n-0": (["n=0"], "n must be an integer >= 1; got 0."),
    "batch_size-0": (["batch_size=0", "n=2", "sampler.steps=2"],
                     "batch_size must be an integer >= 1; got 0."),
    "eta-negative": (["sampler=ddim", "sampler.eta=-0.5", "n=2", "sampler.steps=2"],
                     "sampler.eta must be a number in [0, 1] (0: deterministic DDIM); got -0.5."),
    "eta-with-ddpm": (["sampler=ddpm", "sampler.eta=0.5", "n=2", "sampler.steps=2"],
                      "sampler.eta is not an option of sampler=ddpm: use one of "
                      "dynamic_thresholding_ratio, name, sample_max_value, steps, thresholding, "
                      "timestep_spacing, variance_type."),
    "eta-with-run": (["sampler.eta=0.5", "n=2"],
                     "sampler.eta is not an option of sampler=run (the run's own sampler, whose "
                     "steps alone change here): name the sampler to set it, e.g. sampler=ddim "
                     "sampler.eta=<value>."),
    "option-value": (["sampler=dpmpp_2m", "sampler.solver_order=5", "n=2"],
                     "sampler.solver_order must be one of 1, 2, 3; got 5."),
    "steps-list": (["sampler.steps=[2,3]", "n=2"], "sampler.steps must be one step count for "
                   "diffusion.sample; got [2, 3] (diffusion.evaluate takes several)."),
    "old-steps-key": (["steps=2", "n=2"], "steps " + MOVED.format(key="steps")),
    "old-eta-key": (["eta=0.5", "n=2"], "eta " + MOVED.format(key="eta")),
    "sampler": (["sampler=foo"], f"sampler must be one of {ALL_SAMPLERS}; got 'foo'."),
    "seed": (["seed=abc", "n=2", "sampler.steps=2"], "seed must be an integer; got 'abc'."),
    "chain_frames": (["chain=true", "chain_frames=1", "n=2", "sampler.steps=2"],
                     "chain_frames must be an integer >= 2; got 1."),
    "unknown-plus-key": (["+y=11", "n=2", "sampler.steps=2"],
                         f"y is not a diffusion.sample option: use one of {SAMPLE_KEYS}."),
    "unknown-key": (["y=11"], f"y is not a diffusion.sample option: use one of {SAMPLE_KEYS}."),
    "labels-unconditional": (["labels=3", "n=2", "sampler.steps=2"], "labels was given but the "
                             "model is unconditional (num_classes=None): leave labels out."),
    "labels-out-of-range": (["run=conditional", "labels=[0,10]", "n=2", "sampler.steps=2"],
                            "labels must be class labels in [0, 9]; got 10."),
    "labels-not-ints": (["run=conditional", "labels=a", "n=2", "sampler.steps=2"],
                        "labels must be null, all, a class label or a list of them, e.g. labels=3 "
                        "or labels=[0,1,2]; got 'a'."),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sample_rejects_bad_arguments_before_sampling(runs, case):
    args, message = SAMPLE_CASES[case]
    run = runs["plain"]
    if args[0].startswith("run="):
        run = runs[args.pop(0).removeprefix("run=")]
    _fails_with(_cli("diffusion.sample", f"run={run}", *args), message)
    assert not (run / "samples").exists()  # nothing sampled, nothing written


def test_sample_and_evaluate_without_run_say_how_to_pass_it():
    message = ("run= is required: pass the run folder diffusion.train printed, "
               "e.g. run=runs/<name>/<date>_<time>.")
    _fails_with(_cli("diffusion.sample"), message)
    _fails_with(_cli("diffusion.evaluate"), message)


def test_unwritable_output_fails_before_sampling(runs, tmp_path):
    run = runs["plain"]
    (run / "samples").write_text("a file where the samples folder would go")
    try:
        _fails_with(_cli("diffusion.sample", f"run={run}", "sampler.steps=2", "n=2"),
                    f"{run / 'samples'} is a file, so {run / 'samples' / 'ddim-2_n2_seed0.png'} "
                    "cannot be written: pass out=<file.png> in a folder you can write.")
    finally:
        (run / "samples").unlink()
    taken = tmp_path / "taken.png"
    taken.mkdir()
    _fails_with(_cli("diffusion.sample", f"run={run}", "sampler.steps=2", "n=2",
                     f"out={taken}"),
                f"{taken} is a folder, not a file: pass out=<file.png> in a folder you can "
                "write.")
    _fails_with(_cli("diffusion.sample", f"run={run}", "sampler.steps=2", "n=2",
                     f"out={tmp_path / 'grid'}"),
                f"out must be an image file name such as grid.png; got '{tmp_path / 'grid'}'.")
    assert list(tmp_path.iterdir()) == [taken] and not list(taken.iterdir())


EVALUATE_CASES = {
    "sampler": (["sampler=foo"], f"sampler must be one of {ALL_SAMPLERS}; got 'foo'."),
    "steps-above-T": (["sampler.steps=10,2000"], f"{STEPS_RANGE}; got 2000."),
    "eta": (["sampler=ddim", "sampler.eta=2"],
            "sampler.eta must be a number in [0, 1] (0: deterministic DDIM); got 2."),
    "n": (["n=1"], "n must be an integer >= 2 (images per FID); got 1."),
    "old-spacing-key": (["timestep_spacing=leading"],
                        "timestep_spacing " + MOVED.format(key="timestep_spacing")),
    "batch_size": (["batch_size=0"], "batch_size must be an integer >= 1; got 0."),
    "features": (["metrics.features=foo"], "metrics.features must be one of domain, "
                 "inception; got 'foo'."),
    "unknown-metrics-key": (["+metrics.sed=1"], "metrics.sed is not an option of metrics=fid: "
                            "use one of batch_size, cache_dir, feature_epochs, features, "
                            "inception_weights, kid, kid_subset_size, reference_n, seed."),
    "nll-key-with-fid": (["+metrics.trace=exact"], "metrics.trace is not an option of "
                         "metrics=fid: use one of batch_size, cache_dir, feature_epochs, "
                         "features, inception_weights, kid, kid_subset_size, reference_n, "
                         "seed."),
    "figures-not-a-folder": (["figures"], "{run}/figures is a file, so "
                             "{run}/figures/fid_vs_steps.png cannot be written: "
                             "diffusion.evaluate records its results there: make the run "
                             "folder writable or evaluate a copy of it."),
    "eval.json-a-folder": (["eval.json"], "{run}/eval.json is a folder, not a file: "
                           "diffusion.evaluate records its results there: make the run folder "
                           "writable or evaluate a copy of it."),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_rejects_bad_arguments_before_the_feature_network(runs, tmp_path, case):
    """Checked before the feature network is trained (minutes on a real dataset): the
    feature cache stays empty, and nothing is recorded in the run folder."""
    args, message = EVALUATE_CASES[case]
    run = runs["plain"]
    blocker = None
    if args[0] in ("figures", "eval.json"):  # an output location that cannot be written
        blocker = run / args.pop(0)
        blocker.mkdir() if blocker.suffix else blocker.write_text("")
    cache = tmp_path / "cache"
    try:
        result = _cli("diffusion.evaluate", f"run={run}", "n=4", "sampler.steps=2",
                      "device=cpu", f"metrics.cache_dir={cache}", "metrics.feature_epochs=1",
                      *args)
    finally:
        if blocker is not None:
            blocker.rmdir() if blocker.is_dir() else blocker.unlink()
    _fails_with(result, message.format(run=run))
    assert not cache.exists()
    assert not (run / "eval.json").exists() and not (run / "figures").exists()


# ---------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def conditional_pipe(runs):
    return DiffusionPipeline.from_run(runs["conditional"], device="cpu")


def test_pipeline_rejects_steps_zero_instead_of_sampling_all(conditional_pipe):
    with pytest.raises(ValueError, match=r"^steps must be an integer from 1 to 1000"):
        conditional_pipe(2, steps=0)
    with pytest.raises(ValueError, match=r"^steps must be an integer from 1 to 1000"):
        conditional_pipe.sample_across_ranks(2, noise=torch.zeros(2, 1, 28, 28), seed=0,
                                             steps=0)


def test_pipeline_labels_are_checked_against_num_classes(conditional_pipe, runs):
    assert conditional_pipe.num_classes == 10
    for bad in (10, -1):  # 10 is the model's null label: no longer a silent "unconditional"
        with pytest.raises(ValueError, match=rf"^y must be class labels in \[0, 9\]; "
                                             rf"got {bad}\.$"):
            conditional_pipe(2, steps=2, y=torch.tensor([0, bad]))
    with pytest.raises(ValueError, match=r"one label per sample, shape \(2,\)"):
        conditional_pipe(2, steps=2, y=torch.tensor([1]))
    plain = DiffusionPipeline.from_run(runs["plain"], device="cpu")
    assert plain.num_classes is None
    with pytest.raises(ValueError, match="y was given but the model is unconditional"):
        plain(2, steps=2, y=torch.tensor([0, 1]))


def test_labels_reach_the_model(conditional_pipe):
    """The same x_T with different labels gives different images; no labels means the
    balanced labels 0, 1, ..., not the untrained null label."""
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def draw(y=None):
        return conditional_pipe(3, steps=2, noise=noise, y=y).images

    zeros, ones = draw(torch.zeros(3, dtype=torch.long)), draw(torch.ones(3, dtype=torch.long))
    assert (zeros - ones).abs().max() > 1e-4
    torch.testing.assert_close(draw(), draw(torch.tensor([0, 1, 2])), rtol=0, atol=0)


class _Wrapped(nn.Module):
    """A model behind a wrapper that does not pass ``num_classes`` on."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x, t, y=None):
        return self.inner(x, t, y)


def test_wrapped_model_needs_num_classes_stated(conditional_pipe):
    wrapped = _Wrapped(conditional_pipe.model)
    with pytest.raises(ValueError, match=r"_Wrapped has no num_classes: pass num_classes="):
        DiffusionPipeline(wrapped, DDPMScheduler(), (1, 28, 28), device="cpu")
    pipe = DiffusionPipeline(wrapped, DDPMScheduler(), (1, 28, 28), device="cpu", num_classes=10)
    with pytest.raises(ValueError, match=r"y must be class labels in \[0, 9\]; got 10"):
        pipe(1, steps=1, y=torch.tensor([10]))


def test_a_sweep_checks_every_job_before_the_first_samples(runs, tmp_path):
    good, missing = runs["plain"], tmp_path / "missing"
    before = sorted((good / "samples").glob("*")) if (good / "samples").exists() else []
    result = _cli("diffusion.sample", "-m", f"run={good},{missing}", "n=2", "sampler.steps=2")
    _fails_with(result, f"1 of 2 sweep jobs are invalid, so none was started: job 1 "
                        f"(run={missing}): run={missing} is not a run folder (no config.yaml "
                        f"in it): pass the folder that diffusion.train printed, e.g. "
                        f"runs/<name>/<date>_<time>.")
    after = sorted((good / "samples").glob("*")) if (good / "samples").exists() else []
    assert after == before, "job 0 sampled before the bad job was found"


def test_a_sweep_whose_jobs_would_write_one_file_is_refused(runs, tmp_path):
    out = tmp_path / "grid.png"
    result = _cli("diffusion.sample", "-m", f"run={runs['plain']}", "n=2", "sampler.steps=2",
                  "seed=0,1", f"out={out}")
    _fails_with(result, f"sweep jobs 0, 1 would all write {out}: leave out= out (each job then "
                        "names its own file) or sweep a setting that changes it.")
    assert not out.exists()


def test_a_swept_group_names_the_option_that_does_not_exist(runs):
    result = _cli("diffusion.sample", "-m", f"run={runs['plain']}", "n=2", "sampler.steps=2",
                  "sampler=ddim,foo")
    _fails_with(result, f"sampler must be one of {ALL_SAMPLERS}; got 'foo'.")
