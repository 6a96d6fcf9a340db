"""DistributedDataParallel through torchrun on the CPU (gloo): two processes train, validate,
sample and evaluate the same function of the config as one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from diffusion.runs.records import read_eval
from diffusion.training.checkpoint import latest_checkpoint
from diffusion.training.loggers import read_metrics

FEATURE_EPOCHS = 20
ARGS = ["model=basic", "model.base_channels=8", "trainer=debug", "logger=none",
        "data.batch_size=8", "data.num_workers=0", "trainer.grad_accum=2",
        "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.val_every=2",
        "trainer.sample_every=4", "trainer.sample_n=6", "sampler.steps=2",
        "trainer.eval_every=4", "trainer.eval_n=10", "metrics.batch_size=3",
        "metrics.kid_subset_size=8", f"metrics.feature_epochs={FEATURE_EPOCHS}"]


def _launch(module: str, args: list[str], nproc: int, cwd=None):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    # a session of its own, so a hang is killed with every worker torchrun started
    proc = subprocess.Popen([*launcher, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{module} with {nproc} processes hung:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_mnist_root):
    """The same training config run by one process and by two gloo processes."""
    root = tmp_path_factory.mktemp("ddp")
    cache = root / "features"
    out = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        _launch("diffusion.train", [*ARGS, f"paths.data_dir={tiny_mnist_root}",
                                    f"metrics.cache_dir={cache}",
                                    f"hydra.run.dir={root / name}"], nproc)
        out[name] = root / name
    out["cache"] = cache
    return out


def test_two_gloo_processes_train_as_one_process(runs):
    single = torch.load(latest_checkpoint(runs["single"] / "checkpoints"), weights_only=True)
    ddp = torch.load(latest_checkpoint(runs["ddp"] / "checkpoints"), weights_only=True)
    # replicas were compared bit for bit at every checkpoint (the run fails otherwise)
    assert ddp["step"] == single["step"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5)
    summary = json.loads((runs["ddp"] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert not any(p.name.startswith("diffusion-rank") for p in runs["ddp"].iterdir())


def test_validation_sampling_and_fid_are_split_across_ranks(runs):
    """Each rank validates its slice of every batch and samples its share of the grid and of
    the FID images; the logged values equal one process's (the weights agree to 1e-5)."""
    logged = {name: read_metrics(runs[name] / "metrics.jsonl") for name in ("single", "ddp")}
    for key in ("val/loss", "eval/fid", "eval/kid"):
        single = [(r["step"], r[key]) for r in logged["single"] if key in r]
        ddp = [(r["step"], r[key]) for r in logged["ddp"] if key in r]
        assert [s for s, _ in single] == [s for s, _ in ddp] == (
            [2, 4] if key == "val/loss" else [4])
        for (_, a), (_, b) in zip(single, ddp, strict=True):
            assert b == pytest.approx(a, rel=1e-3, abs=1e-5), key
    for name in ("single", "ddp"):
        assert (runs[name] / "checkpoints" / "best.pt").is_file()
        assert (runs[name] / "samples" / "step_00000004.png").is_file()


def test_evaluate_splits_sampling_across_ranks(runs, tmp_path):
    """``torchrun -m diffusion.evaluate``: the stochastic DDPM chunks (3 of 4 images: rank 0
    takes two, rank 1 one) give the same FID as one process."""
    args = ["n=12", "batch_size=4", "sampler=ddpm", "sampler.steps=3", "device=cpu", "plot=false",
            f"metrics.cache_dir={runs['cache']}", "metrics.kid_subset_size=8",
            f"metrics.feature_epochs={FEATURE_EPOCHS}"]
    entries = {}
    for nproc in (1, 2):
        run = tmp_path / f"run{nproc}"
        shutil.copytree(runs["single"], run)
        (run / "eval.json").unlink(missing_ok=True)
        _launch("diffusion.evaluate", [f"run={run}", *args], nproc)
        entries[nproc] = next(iter(read_eval(run).values()))
    assert entries[2]["processes"] == 2 and entries[1]["processes"] == 1
    assert entries[2]["fid"] == pytest.approx(entries[1]["fid"], rel=1e-6, abs=1e-6)
    assert entries[2]["kid"] == pytest.approx(entries[1]["kid"], rel=1e-6, abs=1e-7)


def assert_same_samples_on_two_ranks(args: list[str], tmp_path) -> None:
    """``diffusion.sample`` of 10 MNIST-sized images with ``args`` gives the same tensors
    from one process and from two."""
    images = {}
    for nproc in (1, 2):
        out = tmp_path / f"grid{nproc}.png"
        _launch("diffusion.sample", [*args, "save_tensors=true", f"out={out}"], nproc)
        images[nproc] = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert images[1].shape == (10, 1, 28, 28)
    torch.testing.assert_close(images[2], images[1], rtol=0, atol=1e-6)


def test_sample_splits_batches_across_ranks(runs, tmp_path):
    assert_same_samples_on_two_ranks(
        [f"run={runs['single']}", "n=10", "batch_size=4", "sampler=ddpm", "sampler.steps=3",
         "device=cpu"], tmp_path)
