"""DistributedDataParallel through torchrun on the CPU (gloo): two processes train
the same function of the config as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from diffusion.training.checkpoint import latest_checkpoint

ARGS = ["model=basic", "model.base_channels=8", "trainer=debug", "logger=none",
        "data.batch_size=8", "data.num_workers=0", "trainer.grad_accum=2",
        "trainer.sample_every=0", "trainer.max_steps=4", "trainer.ckpt_every=2"]


def _train(run_dir, data_root, nproc: int):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [*launcher, "-m", "diffusion.train", *ARGS, f"paths.data_dir={data_root}",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(latest_checkpoint(run_dir / "checkpoints"), weights_only=True)


def test_two_gloo_processes_match_one_process(tmp_path, tiny_mnist_root):
    single = _train(tmp_path / "single", tiny_mnist_root, nproc=1)
    ddp = _train(tmp_path / "ddp", tiny_mnist_root, nproc=2)
    # replicas were compared bit for bit at every checkpoint (the run fails otherwise)
    assert ddp["step"] == single["step"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert not any(p.name.startswith("diffusion-rank") for p in (tmp_path / "ddp").iterdir())
