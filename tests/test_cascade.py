"""Cascades (``conditioning=low_res``, ``diffusion.sample upsample=``): the augmentation
against its closed form, applied and recorded in training, a two-stage cascade end to end, and
the stages that do not chain refused before any model loads."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from diffusion.commands.sample import sample
from diffusion.commands.train import train
from diffusion.config.preflight import check_config
from diffusion.errors import ConfigError
from diffusion.models.low_res import LowResConditioning
from diffusion.pipeline import DiffusionPipeline
from hydra_utils import compose_config, debug_overrides

BASE, FULL = 14, 28  # the tiny MNIST: a 14 px base, a 14 -> 28 stage


def test_the_augmentation_is_the_cosine_variance_preserving_mix():
    low_res = LowResConditioning(factor=2, aug_max=0.5, level=0.1)
    gen = torch.Generator().manual_seed(0)
    low, noise = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    level = torch.tensor([0.0, 0.5, 1.0])
    out = low_res.augment(low, level, noise)
    torch.testing.assert_close(out[0], low[0])  # level 0: the image
    torch.testing.assert_close(out[2], noise[2], atol=1e-6, rtol=0)  # level 1: the noise
    torch.testing.assert_close(out[1], math.sqrt(0.5) * (low[1] + noise[1]))  # cos^2(pi/4)
    # the box filter, then bilinear back up
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(low_res.downsample(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    cond = low_res.condition(low_res.downsample(x), 4, torch.zeros(1), torch.zeros(1, 1, 2, 2))
    assert cond.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="low_res.factor must be an integer >= 2"):
        LowResConditioning(factor=1)


def test_training_draws_levels_up_to_aug_max_per_sample():
    low_res = LowResConditioning(factor=2, aug_max=0.3)
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    cond, level = low_res.training_inputs(x0, torch.Generator().manual_seed(0))
    assert cond.shape == x0.shape and level.shape == (64,)
    assert 0 <= float(level.min()) and float(level.max()) <= 0.3 and level.std() > 0.05
    # the global batch's draws, sliced: the run does not depend on the process count
    whole = low_res.training_inputs(x0, torch.Generator().manual_seed(0))
    half = low_res.training_inputs(x0[32:], torch.Generator().manual_seed(0), 64, slice(32, 64))
    torch.testing.assert_close(half[0], whole[0][32:])
    torch.testing.assert_close(half[1], whole[1][32:])


def stage_overrides(root, size: int, *extra: str) -> list[str]:
    return debug_overrides(root, "model=basic", "model.base_channels=8",
                           f"data.image_size={size}", *extra)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, tiny_mnist_root):
    """A 14 px base run and a 14 -> 28 super-resolution run, a few steps each."""
    folder = tmp_path_factory.mktemp("cascade")
    runs = {}
    for name, overrides in (("base", stage_overrides(tiny_mnist_root, BASE)),
                            ("sr", stage_overrides(tiny_mnist_root, FULL, "conditioning=low_res",
                                                   "low_res.aug_max=0.4"))):
        runs[name] = folder / name
        runs[name].mkdir()
        train(compose_config(overrides), runs[name])
    return runs


def test_a_stage_trains_on_augmented_inputs_and_records_them(cascade, tiny_mnist_root,
                                                             tmp_path):
    cfg = yaml.safe_load((cascade["sr"] / "config.yaml").read_text())
    assert cfg["low_res"] == {"factor": 2, "aug_max": 0.4, "level": 0.1}
    assert cfg["model"]["cond_channels"] == 1
    grids = sorted((cascade["sr"] / "samples").glob("step_*.png"))
    assert grids  # inputs above outputs
    # the model sees the augmented input and its level at every training step
    seen = []
    run = tmp_path / "spy"
    run.mkdir()
    from diffusion.models.basic import BasicUNet

    original = BasicUNet.forward

    def spy(self, x, t, y=None, cond=None, level=None):
        if self.training:
            seen.append((cond.shape, level.clone()))
        return original(self, x, t, y, cond=cond, level=level)

    BasicUNet.forward = spy
    try:
        train(compose_config(stage_overrides(tiny_mnist_root, FULL, "conditioning=low_res",
                                             "trainer.max_steps=2", "trainer.sample_every=0",
                                             "trainer.val_every=0")), run)
    finally:
        BasicUNet.forward = original
    assert len(seen) == 2 and all(shape == (8, 1, FULL, FULL) for shape, _ in seen)
    levels = torch.cat([level for _, level in seen])
    assert float(levels.max()) <= 0.5 and len(set(levels.tolist())) == 16


def test_a_two_stage_cascade_samples_end_to_end(cascade, tmp_path):
    written = sample(compose_config(
        [f"run={cascade['base']}", f"upsample={cascade['sr']}", "n=4", "sampler.steps=2",
         f"out={tmp_path}/cascade.png", "save_tensors=true"], config_name="sample"))
    images = torch.load(written["tensors"], weights_only=True)
    assert images.shape == (4, 1, FULL, FULL) and float(images.abs().max()) <= 1.0
    # the same as the two pipelines by hand
    base = DiffusionPipeline.from_run(cascade["base"], device="cpu")
    stage = DiffusionPipeline.from_run(cascade["sr"], device="cpu")
    low = base.sample_across_ranks(4, noise=torch.randn((4, 1, BASE, BASE),
                                   generator=torch.Generator().manual_seed(0)), seed=0,
                                   chunk_size=256, steps=2).images
    from diffusion.sampling.cascade import upsample

    torch.testing.assert_close(images, upsample(low, [stage], 0, 256))
    # the level at sampling changes the images; the stage refuses to run without inputs
    other = upsample(low, [stage], 0, 256, low_res_level=0.9)
    assert not torch.allclose(other, images)
    with pytest.raises(ConfigError, match=r"this run is a super-resolution stage: pass "
                                          r"low_res, the 2 images it upsamples, of shape "
                                          r"\(2, 1, 14, 14\)"):
        stage(2, steps=2)


def test_stages_that_do_not_chain_are_refused_before_loading(cascade, tmp_path,
                                                             tiny_mnist_root):
    def check(*overrides):
        from diffusion.commands.sample import check_sample_config

        check_sample_config(compose_config([*overrides, "n=2", f"out={tmp_path}/x.png"],
                                           config_name="sample"))

    with pytest.raises(ConfigError, match=r"upsample=.* upsamples 1-channel 14 px images to "
                                          r"28 px, but the stage before it gives 1-channel "
                                          r"28 px images"):
        check(f"run={cascade['base']}", f"upsample=[{cascade['sr']},{cascade['sr']}]")
    with pytest.raises(ConfigError, match=r"^run= is itself a super-resolution stage"):
        check(f"run={cascade['sr']}", f"upsample={cascade['sr']}")
    with pytest.raises(ConfigError, match=r"upsample=.* is not a super-resolution stage"):
        check(f"run={cascade['base']}", f"upsample={cascade['base']}")
    with pytest.raises(ConfigError, match="pass upsample=<super-resolution run> too"):
        check(f"run={cascade['base']}", "low_res_level=0.2")
    with pytest.raises(ConfigError, match="trains with trainer.eval_every=0"):
        check_config(compose_config(stage_overrides(tiny_mnist_root, FULL,
                                                    "conditioning=low_res",
                                                    "trainer.eval_every=2")))
    with pytest.raises(ConfigError, match="low_res.factor=3 does not divide"):
        check_config(compose_config(stage_overrides(tiny_mnist_root, FULL,
                                                    "conditioning=low_res", "low_res.factor=3")))


def test_the_cascade_is_scored_on_its_last_stage_against_its_data(cascade, tmp_path,
                                                                  monkeypatch):
    from diffusion.commands import evaluate as evaluate_command
    from diffusion.commands.evaluate import evaluate
    from diffusion.runs.records import read_eval
    from diffusion.sampling.cascade import CascadePipeline
    from test_metrics import EPOCHS

    cache = tmp_path / "features"
    cfg = compose_config([f"run={cascade['base']}", f"upsample={cascade['sr']}",
                          f"metrics.cache_dir={cache}", f"metrics.feature_epochs={EPOCHS}",
                          "metrics.kid_subset_size=8", "batch_size=8", "device=cpu", "n=16",
                          "sampler.steps=2", "plot=false", "low_res_level=0.2"],
                         config_name="evaluate")
    sizes = []
    real = evaluate_command.build_scorer
    monkeypatch.setattr(evaluate_command, "build_scorer", lambda metrics, data, **kw: (
        sizes.append(data.image_size) or real(metrics, data, **kw)))
    (result,) = evaluate(cfg)
    assert sizes == [FULL]  # the reference is the last stage's data
    entry = next(iter(read_eval(cascade["base"]).values()))
    assert entry["upsample"] == [str(cascade["sr"].resolve())] and entry["low_res_level"] == 0.2
    assert entry["reference"] == "mnist/test" and result.n == 16
    assert f"upsample=[{cascade['sr']}]" in entry["command"]
    assert "upsample=" in next(iter(read_eval(cascade["base"])))  # in the entry's key
    # the chunks go through the stage as a plain draw would take them
    base = DiffusionPipeline.from_run(cascade["base"], device="cpu")
    stage = DiffusionPipeline.from_run(cascade["sr"], device="cpu")
    pipe = CascadePipeline(base, [stage], seed=3, low_res_level=0.2)
    noise = torch.randn((6, 1, BASE, BASE), generator=torch.Generator().manual_seed(0))
    out = pipe.sample_across_ranks(6, noise=noise, seed=0, chunk_size=4, steps=2).images
    low = base.sample_across_ranks(6, noise=noise, seed=0, chunk_size=4, steps=2).images
    expected = torch.cat([pipe.through_stages(low[:4], 0), pipe.through_stages(low[4:], 1)])
    assert out.shape == (6, 1, FULL, FULL)
    torch.testing.assert_close(out, expected)


def test_a_stage_resumes_bit_exactly(tmp_path, tiny_mnist_root):
    from test_train import assert_same_state, straight_and_resumed

    args = ("model=basic", "model.base_channels=8", "conditioning=low_res",
            "trainer.ckpt_every=3", "trainer.keep_last=0", "trainer.sample_every=0")
    straight, resumed = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    assert_same_state(straight, resumed)


def test_a_stage_is_not_edited(cascade):
    stage = DiffusionPipeline.from_run(cascade["sr"], device="cpu")
    with pytest.raises(ConfigError, match="edit the cascade's base run"):
        stage.img2img(torch.zeros(1, 1, FULL, FULL), strength=0.5, steps=2)
