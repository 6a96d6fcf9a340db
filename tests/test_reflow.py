"""Reflow (Liu et al. 2023): the trainer's paired noise and its start from a run's weights,
the pairs as a dataset, and ``python -m diffusion.reflow`` from a flow run to the next
rectified flow, resumed and refused where it must be."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from cli_helpers import cli_env
from diffusion.errors import CheckpointError, ConfigError
from diffusion.models import BasicUNet
from diffusion.processes import FlowProcess
from diffusion.training import TrainerConfig
from diffusion.training.reflow import PairDataset, make_pairs, pair_shards
from diffusion.training.score_matching import ScoreMatching
from diffusion.training.trainer import Trainer


def _trainer(tmp_path, *, images=None, init_from=None, base_channels=8, name="run") -> Trainer:
    images = torch.zeros(8, 1, 8, 8) if images is None else images
    torch.manual_seed(0)
    model = BasicUNet(in_channels=1, image_size=8, base_channels=base_channels)
    process = FlowProcess()
    cfg = TrainerConfig(device="cpu", precision="fp32", progress=False, init_from=init_from,
                        max_steps=2, ckpt_every=2, sample_every=0, val_every=0, log_every=1)
    return Trainer(model, process, lambda params: torch.optim.AdamW(params, lr=1e-3),
                   TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), cfg,
                   batch_size=4, run_dir=tmp_path / name, objective=ScoreMatching(
                       process, weighting="none"))


def test_given_noise_replaces_the_draw_and_t_is_still_drawn(tmp_path):
    trainer = _trainer(tmp_path)
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    x_in, _, target, t = trainer._noised(x0, g, noise=noise)
    torch.testing.assert_close(target, (noise - x0).double(), check_dtype=False)  # u = eps - x0
    tb = t.reshape(-1, 1, 1, 1)
    c_in = trainer.objective.process.c_in(t).reshape(-1, 1, 1, 1)  # the network's input scale
    torch.testing.assert_close(x_in.double(), c_in * ((1 - tb) * x0 + tb * noise),
                               check_dtype=False)
    # the same generator state without pairs draws the same t (the stream stays aligned)
    _, _, _, fresh_t = trainer._noised(x0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(t, fresh_t)


def test_a_pair_dataset_trains_with_its_own_noise(tmp_path):
    """A step over pairs sees (image, noise) as they were paired: with an SGD step of lr 0 the
    loss is the network's error on those exact targets."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save({"noise": noise[:4], "images": images[:4], "settings": {}}, pairs / "pairs_00000.pt")
    torch.save({"noise": noise[4:], "images": images[4:], "settings": {}}, pairs / "pairs_00001.pt")
    like = TensorDataset(torch.zeros(3, 1, 8, 8), torch.zeros(3))
    data = PairDataset(pairs, like=like)
    assert len(data) == 6
    image, label, paired = data[5]
    assert label == 0 and torch.equal(image, images[5]) and torch.equal(paired, noise[5])
    with pytest.raises(ConfigError, match="holds images of shape"):
        PairDataset(pairs, like=TensorDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3)))
    (pairs / "pairs_00000.pt").unlink()
    with pytest.raises(ConfigError, match="lacks pairs_00000.pt"):
        pair_shards(pairs)
    with pytest.raises(ConfigError, match="holds no pairs"):
        pair_shards(tmp_path / "empty")


def test_init_from_copies_the_ema_weights_and_refuses_another_network(tmp_path):
    first = _trainer(tmp_path, images=torch.rand(8, 1, 8, 8) * 2 - 1)
    first.fit()
    ema = first.ema.model.state_dict()
    second = _trainer(tmp_path, init_from=str(tmp_path / "run"), name="second")
    second.init_weights(second.cfg.init_from)
    for key, value in ema.items():
        assert torch.equal(second.model.state_dict()[key], value), key
        assert torch.equal(second.ema.model.state_dict()[key], value), key
    assert second.step == 0 and not second.optimizer.state  # a fresh optimizer
    wider = _trainer(tmp_path, base_channels=16, name="wider")
    with pytest.raises(CheckpointError, match="holds another network than model describes"):
        wider.init_weights(tmp_path / "run")
    with pytest.raises(CheckpointError, match="neither a checkpoint nor a run folder"):
        wider.init_weights(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        wider.init_weights(tmp_path / "wider")


@pytest.mark.slow
def test_reflow_command_draws_pairs_trains_and_resumes(tmp_path, tiny_mnist_root):
    """A tiny flow run reflowed from the command line: the pairs are the run's ODE images of
    their noise, the new run starts from its EMA weights and trains on them, the straightness
    is recorded before and after; the same command again keeps the pairs and the run."""
    from test_train import run_training

    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler=flow", "objective=flow", "sampler=flow_euler",
                          "sampler.steps=3")
    args = [f"run={run}", "pairs=6", "shard_size=4", "sampler=flow_euler", "sampler.steps=2",
            "straightness_n=3", "straightness_steps=2", "device=cpu",
            "train.trainer.max_steps=2", "train.trainer.eval_every=0", "train.data.batch_size=4"]
    command = [sys.executable, "-m", "diffusion.reflow", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run-reflow"
    record = json.loads((out / "straightness.json").read_text())
    assert record["pairs"]["n"] == 6 and record["pairs"]["nfe"] == 2
    assert record["before"]["n"] == 3 and record["after"]["n"] == 3
    assert record["before"]["value"] != record["after"]["value"]
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.pairs == str((out / "pairs").resolve()) and saved.trainer.max_steps == 2
    assert saved.trainer.init_from.endswith("step_00000004.pt")
    assert json.loads((out / "env.json").read_text())["rerun_of"] == str(run.resolve())
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))[-1] == \
        "step_00000002.pt"
    shards = pair_shards(out / "pairs")
    assert [s.size for s in shards] == [4, 2]
    stamps = [s.path.stat().st_mtime_ns for s in shards]
    # the pairs are what the first run's pipeline makes of their noise
    from diffusion.sampling.pipeline import DiffusionPipeline
    from diffusion.sampling.sampler import SamplerSpec
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    again = make_pairs(pipe, 6, tmp_path / "check", spec=SamplerSpec("flow_euler", 2, None),
                       shard_size=4, checkpoint=saved.trainer.init_from)
    first = torch.load(shards[0].path, weights_only=True)
    torch.testing.assert_close(torch.load(again[0].path, weights_only=True)["images"],
                               first["images"])
    # the same command again: pairs kept, the run at its max_steps, nothing trained anew
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s.path.stat().st_mtime_ns for s in pair_shards(out / "pairs")] == stamps
    assert "already at step 2" in done.stdout


def test_reflow_refuses_a_run_that_is_not_flow_matching(tmp_path, tiny_mnist_root):
    from diffusion.commands.reflow import check_reflow_config
    from hydra_utils import compose_config
    from test_train import run_training

    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8")
    cfg = compose_config([f"run={run}", "sampler=flow_euler", "sampler.steps=2"],
                         config_name="reflow")
    with pytest.raises(ConfigError, match="reflow straightens flow matching's paths"):
        check_reflow_config(cfg)


def test_train_words_become_one_quoted_list():
    from diffusion.commands.reflow import _train_words
    from hydra_utils import compose_config

    argv = _train_words(["run=x", "train.trainer.max_steps=4", "++train.optimizer.lr=2e-4",
                         'train.tags=["a b"]'])
    assert argv[0] == "run=x" and len(argv) == 2
    assert list(compose_config(argv, config_name="reflow").train) == [
        "trainer.max_steps=4", "++optimizer.lr=2e-4", 'tags=["a b"]']
    with pytest.raises(ConfigError, match="not both"):
        _train_words(["train=[]", "train.seed=1"])


def test_reflow_refuses_a_stochastic_sampler_and_a_bad_train_list(tmp_path, tiny_mnist_root):
    from diffusion.commands.reflow import _train_words, check_reflow_config
    from hydra_utils import compose_config
    from test_train import run_training

    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler=flow", "objective=flow", "sampler=flow_euler")
    for overrides, message in (
            (["sampler=edm_euler_a"], "sample it with sampler=flow_"),
            (_train_words(["train.model=unet"]), "cannot switch model=unet"),
            (_train_words(["train.trainer.max_step=3"]), "max_step"),
            (["pairs=0"], "pairs")):
        cfg = compose_config([f"run={run}", *overrides], config_name="reflow")
        with pytest.raises(ConfigError, match=message):
            check_reflow_config(cfg)
    assert not (tmp_path / "run-reflow" / "config.yaml").exists()
