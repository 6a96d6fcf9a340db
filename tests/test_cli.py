"""Entry points as a user meets them: config errors, resume and sampling from a run
folder, the Python pipeline, and W&B with no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from PIL import Image

from diffusion.commands.sample import sample
from diffusion.errors import CheckpointError, ConfigError
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.training.checkpoint import latest_checkpoint
from diffusion.training.loggers import WandbLogger, read_metrics
from hydra_utils import compose_config
from test_train import run_training

GROUPS = {
    "model": ["basic", "unet", "unet_attn"],
    "scheduler": ["ddpm", "ddim"],
    "data": ["mnist", "fashion_mnist", "flowers102"],
    "trainer": ["default", "cpu", "debug"],
    "optimizer": ["adamw", "adam"],
    "logger": ["wandb", "none"],
    "experiment": ["mnist", "fashion_mnist", "mnist_cpu", "mnist_cpu_ddpm", "flowers64"],
}


@pytest.mark.parametrize(("group", "option"),
                         [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_group_option_composes_and_builds(group, option):
    from hydra.utils import instantiate

    cfg = compose_config([f"{group}={option}"])
    assert cfg.data.channels in (1, 3)
    model = instantiate(cfg.model)  # sizes from data, no weights downloaded
    assert model.in_channels == cfg.data.channels
    instantiate(cfg.scheduler)
    instantiate(cfg.trainer)


def test_unknown_option_lists_the_choices():
    with pytest.raises(MissingConfigException, match="Could not find 'model/foo'") as info:
        compose_config(["model=foo"])
    assert "unet_attn" in str(info.value) and "basic" in str(info.value)


def _cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_bad_value_is_one_sentence_and_exit_1(tmp_path, tiny_mnist_root):
    result = _cli("diffusion.train", "trainer.max_steps=-5", "logger=none",
                  f"paths.data_dir={tiny_mnist_root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: trainer.max_steps must be an integer >= 1; got -5.")
    assert "Traceback" not in result.stderr


MY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: my_model
name: my_exp
"""


def write_user_conf(folder: Path) -> Path:
    """A config folder of a user's own: a model option and an experiment that uses it."""
    (folder / "model").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "model" / "my_model.yaml").write_text("defaults:\n  - basic\nbase_channels: 8\n")
    (folder / "experiment" / "my_exp.yaml").write_text(MY_EXPERIMENT)
    return folder


@pytest.mark.parametrize("how", ["--config-dir", "-cd=", "hydra.searchpath"])
def test_own_config_folder_reaches_the_checks(tmp_path, how):
    """Options from a user's folder are found by the checks before the run, as by Hydra."""
    from diffusion.commands.train import _prepare, _read_command_line

    conf = write_user_conf(tmp_path / "my_conf")
    added, flags = {"--config-dir": (["--config-dir", str(conf)], [f"--config-dir={conf}"]),
                    "-cd=": ([f"-cd={conf}"], [f"--config-dir={conf}"]),
                    "hydra.searchpath": ([f"hydra.searchpath=[file://{conf}]"], [])}[how]
    with pytest.raises(ConfigError, match=r"^model=nope is not an option of model: choose one "
                                          r"of basic, diffusers_unet, my_model, unet, "
                                          r"unet_attn\.$"):
        _prepare(_read_command_line([*added, "experiment=my_exp", "model=nope"]))
    overrides = ["experiment=my_exp", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    argv, *_ = _prepare(_read_command_line([*overrides, *added]))
    assert argv == [*flags, *overrides, *[a for a in added if a.startswith("hydra.")]]
    with pytest.raises(ConfigError, match="^experiment=my_exp is not an option of experiment"):
        _prepare(_read_command_line(overrides))


def test_own_primary_config_reaches_the_checks(tmp_path):
    """``--config-name`` picks a primary config of the user's folder for the checks too."""
    from diffusion.commands.train import _prepare, _read_command_line

    conf = write_user_conf(tmp_path / "my_conf")
    (conf / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\n"
                                    "trainer:\n  max_steps: -1\n")
    with pytest.raises(ConfigError, match="^trainer.max_steps must be an integer >= 1; "
                                          "got -1"):
        _prepare(_read_command_line(["logger=none", "-cd", str(conf), "-cn", "mine"]))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_mnist_root):
    tmp = tmp_path_factory.mktemp("trained")
    run_dir, _ = run_training(tmp, tiny_mnist_root, "model=basic", "model.base_channels=8")
    return run_dir


def test_resume_cli_continues_in_the_same_folder(tmp_path, tiny_mnist_root):
    run_dir, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8")
    result = _cli("diffusion.train", f"resume={run_dir}", "trainer.max_steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000006.pt"
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert steps == [2, 4, 6]
    assert (run_dir / "resumes.jsonl").is_file()


def test_sample_cli_writes_grid_tensors_and_chain(trained_run):
    result = _cli("diffusion.sample", f"run={trained_run}", "sampler=ddim", "sampler.steps=3",
                  "n=6", "seed=0", "save_tensors=true", "chain=true", "chain_frames=3")
    assert result.returncode == 0, result.stderr[-2000:]
    grid = trained_run / "samples" / "ddim-3_n6_seed0.png"
    assert Image.open(grid).size[0] > 28
    images = torch.load(grid.with_suffix(".pt"), weights_only=True)
    assert images.shape == (6, 1, 28, 28)
    gif = Image.open(grid.with_name("ddim-3_n6_seed0_chain-f3-r6.gif"))
    assert gif.n_frames == 3  # x_T, one intermediate x_t and the final sample


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_pipeline_from_run_is_reproducible(trained_run, sampler):
    pipe = DiffusionPipeline.from_run(trained_run, device="cpu")

    def draw(seed, batch_size=256):
        return pipe(5, steps=4, sampler=sampler, batch_size=batch_size,
                    generator=torch.Generator().manual_seed(seed)).images

    a = draw(3)
    assert a.shape == (5, 1, 28, 28) and torch.isfinite(a).all()
    torch.testing.assert_close(a, draw(3), rtol=0, atol=0)
    assert not torch.equal(a, draw(4))
    if sampler == "ddim":  # deterministic given x_T, which does not depend on batching
        torch.testing.assert_close(a, draw(3, batch_size=2))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_chunked_sampling_is_reproducible_and_chunk_seeded(trained_run, sampler):
    """``sample_across_ranks`` in one process: chunk c draws its step noise from its own seed,
    so it equals the plain pipeline given that chunk's x_T and generator."""
    from diffusion.sampling.pipeline import chunk_seed

    pipe = DiffusionPipeline.from_run(trained_run, device="cpu")
    noise = torch.randn((5, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    out = pipe.sample_across_ranks(5, noise=noise, seed=7, chunk_size=2, steps=3,
                                   sampler=sampler, return_chain=True, chain_frames=3)
    assert out.images.shape == (5, 1, 28, 28) and out.chain.shape == (5, 3, 1, 28, 28)
    for index, start in enumerate((0, 2, 4)):
        chunk = pipe(len(noise[start:start + 2]), steps=3, sampler=sampler,
                     noise=noise[start:start + 2],
                     generator=torch.Generator().manual_seed(chunk_seed(7, index))).images
        torch.testing.assert_close(out.images[start:start + 2], chunk, rtol=0, atol=0)
    again = pipe.sample_across_ranks(5, noise=lambda start, size: noise[start:start + size],
                                     seed=7, chunk_size=2, steps=3, sampler=sampler)
    torch.testing.assert_close(again.images, out.images, rtol=0, atol=0)
    other = pipe.sample_across_ranks(5, noise=noise, seed=8, chunk_size=2, steps=3,
                                     sampler=sampler).images
    assert torch.equal(other, out.images) == (sampler == "ddim")  # eta=0 draws no step noise
    assert len({chunk_seed(s, c) for s in range(50) for c in range(50)}) == 2500
    with pytest.raises(ValueError, match="noise has 5 samples but n=4"):
        pipe.sample_across_ranks(4, noise=noise, seed=0)
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1; got 0\.$"):
        pipe.sample_across_ranks(0, noise=noise[:0], seed=0)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1; got 0\.$"):
        pipe.sample_across_ranks(5, noise=noise, seed=0, chunk_size=0)


def test_channels_last_sampling_matches(trained_run):
    pipes = {flag: DiffusionPipeline.from_run(trained_run, device="cpu", channels_last=flag)
             for flag in (False, True)}

    def conv_weight(pipe):
        return next(m.weight for m in pipe.model.modules()
                    if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
                    and m.kernel_size[0] > 1)

    assert conv_weight(pipes[True]).is_contiguous(memory_format=torch.channels_last)
    assert not conv_weight(pipes[False]).is_contiguous(memory_format=torch.channels_last)
    draw = {flag: pipe(3, steps=2, generator=torch.Generator().manual_seed(0)).images
            for flag, pipe in pipes.items()}
    torch.testing.assert_close(draw[True], draw[False], rtol=1e-4, atol=1e-5)


def test_sample_in_process_matches_pipeline(trained_run, tmp_path):
    cfg = compose_config([f"run={trained_run}", "sampler.steps=2", "n=4", f"out={tmp_path}/g.png",
                          "save_tensors=true"], config_name="sample")
    sample(cfg)
    saved = torch.load(tmp_path / "g.pt", weights_only=True)
    pipe = DiffusionPipeline.from_run(trained_run, device="cpu")
    torch.testing.assert_close(
        saved, pipe(4, steps=2, generator=torch.Generator().manual_seed(0)).images)


def test_corrupt_checkpoint_is_one_clear_error(trained_run, tmp_path):
    bad = tmp_path / "step_00000009.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a diffusion checkpoint"):
        DiffusionPipeline.from_run(trained_run, checkpoint=bad)
    result = _cli("diffusion.sample", f"run={trained_run}", f"checkpoint={bad}")
    assert result.returncode == 1
    assert "corrupt or not a diffusion checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_run_folder_is_one_clear_error(tmp_path):
    with pytest.raises(Exception, match="is not a run folder"):
        DiffusionPipeline.from_run(tmp_path)


@pytest.fixture
def no_wandb_network(monkeypatch, tmp_path):
    """Point W&B at a closed local port and hide any credentials."""
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_wandb_without_key_logs_offline(no_wandb_network, tmp_path, caplog):
    logger = WandbLogger(tmp_path, project="test", mode="auto", init_timeout=20)
    logger.log_config({"a": 1})
    logger.log_metrics({"train/loss": 0.5}, step=1)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    logger.log_image("samples", image, step=1)
    logger.finish()
    assert "logging offline" in caplog.text
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "wandb_id.txt").read_text()


def test_wandb_disabled_writes_nothing(no_wandb_network, tmp_path):
    logger = WandbLogger(tmp_path, mode="disabled")
    logger.log_metrics({"train/loss": 0.5}, step=1)
    logger.finish()
    assert not list(Path(tmp_path).glob("wandb/*run-*"))
