"""Every mistake a user can make on ``diffusion.train``'s command line ends in one sentence
that names the key or file and says what to do, exits 1, and leaves no run folder behind.

The commands run in-process through ``diffusion.train.main`` (the same code as ``python -m``,
without a second torch import per case); a few run as real processes to show that no
traceback reaches the terminal.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, cli_env
from diffusion.commands import train as train_cli
from diffusion.sampling.checks import SAMPLERS
from diffusion.schedulers import CONTINUOUS_SAMPLERS


def run_main(argv: list[str], capsys, out: list | None = None) -> tuple[int, str]:
    """(exit status, last stderr line) of ``python -m diffusion.train *argv``; what it
    printed to stdout is appended to ``out``."""
    old = sys.argv
    sys.argv = ["diffusion.train", *argv]
    try:
        train_cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    if out is not None:
        out.append(captured.out)
    err = captured.err.strip().splitlines()
    return code, err[-1] if err else ""


*_NAMES, _LAST = sorted(CONTINUOUS_SAMPLERS)
CONTINUOUS_LIST = f"{', '.join(_NAMES)} or {_LAST}"
DENIED = "(?:permission denied|operation not permitted|read-only file system)"


@contextlib.contextmanager
def immutable(path: Path):
    """``path`` read-only even for root (``chattr +i``); skips where the file system
    cannot do it."""
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


def _base(runs: Path, data: Path) -> list[str]:
    return [*TINY, f"paths.data_dir={data}", f"paths.runs_dir={runs}"]


BAD_VALUES = [
    ("optimizer.lr=-1", "error: optimizer.lr must be a number >= 0; got -1."),
    ("optimizer.lr=fast", "error: optimizer.lr must be a number >= 0; got 'fast'."),
    ("optimizer.weight_decay=-0.1", "error: optimizer.weight_decay must be a number >= 0"),
    ("optimizer.betas=[0.9,2]", "error: optimizer.betas must be two numbers in [0, 1)"),
    ("lr_scheduler.warmup_steps=-1",
     "error: lr_scheduler.warmup_steps must be an integer >= 0; got -1."),
    ("lr_scheduler.decay=step", "error: lr_scheduler.decay must be one of constant, cosine"),
    ("trainer.precision=fp8", "error: trainer.precision must be one of auto, fp32, bf16, fp16;"),
    ("trainer.device=tpu", "error: trainer.device must be auto, cpu, cuda or cuda:N;"),
    ("trainer.divergence_factor=0.5", "error: trainer.divergence_factor must be a number > 1"),
    ("trainer.max_steps=-5", "error: trainer.max_steps must be an integer >= 1; got -5."),
    ("model.num_classes=5", "error: model.num_classes is 5 but data mnist has 10 classes; set "
                            "model.num_classes=10"),
    ("model.base_channels=0", "error: Invalid model config: model.base_channels must be an "
                              "integer >= 1; got 0."),
    ("data.batch_size=0", "error: data.batch_size must be an integer >= 1"),
    ("seed=abc", "error: seed must be an integer; got 'abc'."),
    ("model=foo", "error: model=foo is not an option of model: choose one of basic, "
                  "diffusers_unet, unet, unet_attn."),
    ("optimizer=sgd", "error: optimizer=sgd is not an option of optimizer: choose one of adam, "
                      "adamw."),
    ("data=cifar10", "error: data=cifar10 is not an option of data: choose one of "),
    ("trainer.foo=1", "error: trainer.foo is not a config key: check the override's spelling"),
    ("sampler=foo", "error: sampler=foo is not an option of sampler: choose one of "
                    f"{', '.join(sorted(SAMPLERS))}."),
    ("sampler.steps=2000", "error: sampler.steps must be an integer from 1 to 1000 (the "
                           "model's num_train_timesteps); got 2000."),
    ("sampler.solver_order=4", "error: sampler.solver_order is not an option of sampler=ddim: "
                               "use one of dynamic_thresholding_ratio, eta, name, "
                               "sample_max_value, set_alpha_to_one, steps, thresholding, "
                               "timestep_spacing."),
    ("trainer.sample_steps=25", "error: trainer.sample_steps is now sampler.steps: the sampler "
                                "is a config group, e.g. sampler=ddim sampler.steps=50"),
    ("trainer.sampler=heun", "error: trainer.sampler is now sampler=<name>: "),
    ("trainer.loss=l1", "error: trainer.loss is now objective.loss: the training objective is "
                        "a config group, e.g. objective=v_minsnr objective.loss=l1"),
    ("objective=foo", "error: objective=foo is not an option of objective: choose one of corrupt, "
                      "dsm, dsm_likelihood, edm, eps, eps_minsnr, eps_p2, flow, flow_logit_normal, "
                      "v, v_minsnr, v_zero_snr, x0, x0_minsnr."),
    ("scheduler=ve sampler=pc", "error: this objective trains a DDPM noise process; the run's "
                                "is VEProcess, in continuous time: use objective=dsm."),
    ("scheduler=ve objective=dsm", "error: DDIMScheduler walks a discrete DDPM noise process; "
                                   "this run's is VEProcess (continuous time): sample it with "
                                   f"sampler={CONTINUOUS_LIST}."),
    ("objective.weighting=snr", "error: objective.weighting must be one of none, min_snr, p2; "
                                "got 'snr'."),
    ("objective=eps_minsnr scheduler.rescale_betas_zero_snr=true",
     "error: Invalid scheduler config: rescale_betas_zero_snr=True needs prediction_type "
     "'v_prediction' or 'sample', because at zero terminal SNR an epsilon prediction cannot "
     "recover x_0."),
    # an integer setting takes integers only, wherever it is checked
    ("sampler=dpmpp_2m sampler.solver_order=2.0",
     "error: sampler.solver_order must be one of 1, 2, 3; got 2.0."),
    ("trainer.log_every=2.5",
     "error: trainer.log_every must be an integer >= 0 (0 turns it off); got 2.5."),
    ("trainer.max_steps=true", "error: trainer.max_steps must be an integer >= 1; got True."),
    # NaN and infinity are no numbers
    ("objective.offset_noise=nan", "error: objective.offset_noise must be a number >= 0; "
                                   "got nan."),
    ("trainer.grad_clip=inf", "error: trainer.grad_clip must be a number >= 0 (0 turns it "
                              "off); got inf."),
    ("optimizer.lr=nan", "error: optimizer.lr must be a number >= 0; got nan."),
    ("trainer.ema_decay=nan", "error: trainer.ema_decay must be a number in [0, 1); got nan."),
    # a key the component does not take, or a target that is not there
    ("+objective.snr_gama=1", "error: Invalid objective config: Objective.__init__() got an "
                              "unexpected keyword argument 'snr_gama': drop the key"),
    ("objective._target_=foo.Bar", "error: Invalid objective config: Error locating target "
                                   "'foo.Bar': check objective._target_"),
    # a group's option and its keys, named together
    ("sampler=euler sampler.eta=0.3", "error: sampler.eta is not an option of sampler=euler: "
                                      "use one of dynamic_thresholding_ratio, name, "
                                      "sample_max_value, steps, thresholding, "
                                      "timestep_spacing, use_karras_sigmas."),
    ("sampler.name=dpmpp_2m", "error: sampler.name picks the sampler but not its options: use "
                              "sampler=dpmpp_2m (the config group) instead of "
                              "sampler.name=dpmpp_2m."),
    # an option that would change nothing
    ("+foo=1", "error: +foo=1 adds a key that diffusion.train does not read"),
    ("trainer.label_dropout=0.3", "error: trainer.label_dropout applies to class-conditional "
                                  "runs, and this one is unconditional"),
    ("trainer.sample_guidance_scale=2", "error: trainer.sample_guidance_scale applies to "
                                        "class-conditional runs"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES,
                         ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_one_sentence_and_no_folder(override, message, runs, tiny_mnist_root,
                                                  capsys):
    code, last = run_main([*_base(runs, tiny_mnist_root), *override.split()], capsys)
    assert code == 1
    assert last.startswith(message), last
    assert not runs.exists(), "a rejected command created a run folder"


def test_a_batch_larger_than_the_data_leaves_no_run(runs, tiny_mnist_root, capsys):
    """Found once the data is read, before anything is written to the run's folder (which
    is removed, as for every new run that fails before its first step)."""
    code, last = run_main([*_base(runs, tiny_mnist_root), "data.batch_size=100000"], capsys)
    assert code == 1
    assert re.fullmatch(r"error: The dataset has \d+ images, fewer than one batch of 100000; "
                        r"lower data.batch_size.", last), last
    assert not [p for p in runs.rglob("*") if p.is_file()], "the rejected run left files"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(runs, tiny_mnist_root, capsys):
    code, last = run_main([*_base(runs, tiny_mnist_root), "trainer.device=cuda"], capsys)
    assert (code, last) == (1, "error: trainer.device is 'cuda' but no CUDA GPU is visible; "
                               "use trainer.device=auto or cpu.")
    assert not runs.exists()


def test_a_bad_sweep_job_stops_the_sweep_before_any_job(runs, tiny_mnist_root, capsys):
    code, last = run_main(["-m", *_base(runs, tiny_mnist_root), "model=basic,foo",
                           "trainer.max_steps=2,-1"], capsys)
    assert code == 1
    assert last.startswith("error: 3 of 4 sweep jobs are invalid, so none was started: "
                           "job 1 (model=basic trainer.max_steps=-1): trainer.max_steps"), last
    assert "job 2 (model=foo trainer.max_steps=2): model=foo is not an option" in last
    assert not runs.exists()


def test_a_failed_sweep_job_fails_the_sweep_after_the_others(runs, tiny_mnist_root, capsys):
    code, last = run_main(["-m", *_base(runs, tiny_mnist_root), "trainer.grad_clip=0",
                           "trainer.log_every=1", "optimizer.lr=1e-4,1e30,2e-4"], capsys)
    assert code == 1
    assert last.startswith("error: 1 of 3 sweep jobs failed, the others completed: "), last
    assert "/1: TrainingError: The loss became nan" in last
    statuses = {p.parent.name: json.loads(p.read_text())["status"]
                for p in runs.glob("multirun/*/*/status.json")}
    assert statuses == {"0": "completed", "1": "failed", "2": "completed"}


def test_unwritable_runs_dir(tmp_path, tiny_mnist_root, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    with immutable(runs):
        code, last = run_main(_base(runs, tiny_mnist_root), capsys)
    assert code == 1
    assert re.fullmatch(rf"error: Cannot create the run folder {runs}/basic-mnist/\S+ "
                        rf"\({DENIED}\): make {runs} writable or set "
                        r"paths.runs_dir to a writable folder\.", last), last
    assert list(runs.iterdir()) == []


def test_runs_dir_under_a_file(tmp_path, tiny_mnist_root, capsys):
    (tmp_path / "file").write_text("")
    runs = tmp_path / "file" / "runs"
    code, last = run_main(_base(runs, tiny_mnist_root), capsys)
    assert code == 1
    assert "(not a directory): make" in last and "set paths.runs_dir" in last, last


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_mnist_root) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    result = subprocess.run([sys.executable, "-m", "diffusion.train", *TINY,
                             f"paths.data_dir={tiny_mnist_root}", f"hydra.run.dir={run}"],
                            capture_output=True, text=True, env=cli_env(), timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


RESUME_ERRORS = [
    (["model.base_channels=16"], "cannot change model.base_channels (8 -> 16): its checkpoint "
                                 "was trained with the old values"),
    (["scheduler.beta_schedule=cosine"], "cannot change scheduler.beta_schedule ('linear' -> "
                                         "'cosine')"),
    (["data=fashion_mnist"], "cannot switch data=fashion_mnist: a run keeps the groups it "
                             "started with"),
    (["data.name=fashion_mnist"], "cannot change data.name ('mnist' -> 'fashion_mnist')"),
    (["trainer.max_steps=8", "optimizer.lr=-1"], "optimizer.lr must be a number >= 0"),
    (["-m", "trainer.max_steps=8,9"], "resume= continues one run and cannot be swept: drop -m."),
    (["conditioning=class"], "cannot switch conditioning=class: a run keeps the groups it "
                             "started with; start a new run to change it."),
    (["trainer.max_steps=8", "hydra.run.dir=elsewhere"],
     "resume= continues the run in its own folder, so hydra.run.dir=elsewhere does not apply"),
    (["trainer.max_steps=8", "+foo=1"], "+foo=1 adds a key that diffusion.train does not read"),
    (["trainer.max_steps=8", "trainer.label_dropout=0.2"], "trainer.label_dropout applies to "
                                                           "class-conditional runs"),
]


@pytest.mark.parametrize(("overrides", "message"), RESUME_ERRORS,
                         ids=[" ".join(o) for o, _ in RESUME_ERRORS])
def test_rejected_resume_leaves_the_run_as_it_was(overrides, message, run_copy, capsys):
    before = _files(run_copy)
    code, last = run_main([f"resume={run_copy}", *overrides], capsys)
    assert code == 1
    assert last.startswith("error: ") and message in last, last
    assert _files(run_copy) == before


def test_resume_of_a_finished_run_does_nothing(run_copy, capsys):
    before, printed = _files(run_copy), []
    code, _ = run_main([f"resume={run_copy}"], capsys, printed)
    assert code == 0
    assert printed[0].strip() == (
        f"Run {run_copy} is already at step 4 and trainer.max_steps is 4: nothing to do; pass "
        "trainer.max_steps=N with N > 4 to train it longer.")
    assert _files(run_copy) == before


def test_resume_with_a_corrupt_checkpoint_keeps_status_and_config(run_copy, capsys):
    newest = run_copy / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    before = _files(run_copy)
    code, last = run_main([f"resume={run_copy}", "trainer.max_steps=6"], capsys)
    assert code == 1
    assert last == (f"error: Checkpoint {newest} is corrupt or not a diffusion checkpoint "
                    "(RuntimeError); delete it to fall back to the previous one."), last
    assert _files(run_copy) == before
    assert json.loads((run_copy / "status.json").read_text())["status"] == "completed"


def test_resume_without_checkpoints(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    code, last = run_main([f"resume={run_copy}", "trainer.max_steps=6"], capsys)
    assert (code, last) == (1, f"error: Nothing to resume in {run_copy}: it has no "
                               "checkpoints/step_*.pt; start a new run instead.")


def test_resume_of_something_that_is_no_run(tmp_path, capsys):
    code, last = run_main([f"resume={tmp_path}"], capsys)
    assert code == 1
    assert last.startswith(f"error: resume={tmp_path} is not a run folder (no config.yaml")


def test_resume_of_a_read_only_run(run_copy, capsys):
    before = _files(run_copy)
    with immutable(run_copy):
        code, last = run_main([f"resume={run_copy}", "trainer.max_steps=6"], capsys)
    assert code == 1
    assert re.fullmatch(rf"error: Cannot write to the run folder {run_copy} \({DENIED}\): "
                        r"copy the run folder to a writable place and resume the copy\.",
                        last), last
    assert _files(run_copy) == before


def test_run_dir_that_holds_a_run_is_refused(run_copy, capsys):
    code, last = run_main([*TINY, f"hydra.run.dir={run_copy}"], capsys)
    assert (code, last) == (1, f"error: hydra.run.dir={run_copy} already holds a run: continue "
                               f"it with resume={run_copy}, or choose another folder.")


@pytest.mark.parametrize("override", ["optimizer.lr=fast", "lr_scheduler.warmup_steps=-1",
                                      "trainer.precision=fp8"])
def test_no_traceback_reaches_the_terminal(override, tmp_path, tiny_mnist_root):
    result = subprocess.run(
        [sys.executable, "-m", "diffusion.train", *_base(tmp_path / "runs", tiny_mnist_root),
         override], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {override.split('=')[0]}"), result.stderr
    assert not (tmp_path / "runs").exists()
