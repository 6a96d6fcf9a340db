"""Latent diffusion (``latent=<autoencoder run>``): a run trains on its data's cached latents,
records the autoencoder and the scale, and decodes wherever images leave it (grids,
``from_run``, ``diffusion.evaluate``, the edits); the wrong autoencoder is refused in one
sentence."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from diffusion.commands.evaluate import evaluate
from diffusion.commands.train import train
from diffusion.commands.train_autoencoder import train_autoencoder
from diffusion.config.preflight import check_config
from diffusion.data.datasets import SampleKey
from diffusion.data.latents import DeviceLatents, LatentDataset
from diffusion.errors import ConfigError
from diffusion.models.latent import LatentSpace
from diffusion.pipeline import DiffusionPipeline
from diffusion.runs.records import read_eval
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config, debug_overrides
from test_autoencoder import ae_overrides
from test_metrics import EPOCHS, as_hydra_writes_it

SIZE = 16  # the tiny MNIST at 16 px: f = 4 latents of 2 x 4 x 4


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory, tiny_mnist_root):
    run = tmp_path_factory.mktemp("autoencoder")
    cfg = compose_config(ae_overrides(tiny_mnist_root, f"data.image_size={SIZE}", "steps=40",
                                      "eval_every=40", "log_every=20"),
                         config_name="train_autoencoder")
    train_autoencoder(cfg, run)
    return run


def latent_overrides(root, autoencoder, *extra: str) -> list[str]:
    return debug_overrides(root, "model=basic", "model.base_channels=8",
                           f"data.image_size={SIZE}", f"latent={autoencoder}",
                           f"+data.cache_dir={root.parent / 'latent-cache'}", *extra)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, tiny_mnist_root, autoencoder_run, fid_cache):
    run = tmp_path_factory.mktemp("latent") / "run"
    run.mkdir()
    cfg = compose_config(latent_overrides(
        tiny_mnist_root, autoencoder_run, "trainer.eval_every=4", "trainer.eval_n=8",
        f"metrics.cache_dir={fid_cache}", f"metrics.feature_epochs={EPOCHS}",
        "metrics.kid_subset_size=8"))
    summary = train(cfg, run)
    as_hydra_writes_it(run)
    return run, summary


def test_a_latent_run_records_its_autoencoder_and_scale(latent_run, autoencoder_run):
    run, summary = latent_run
    assert summary["step"] == 4
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    record = cfg["latent_space"]
    assert record["run"] == str(autoencoder_run.resolve())
    assert record["checkpoint"] == str(autoencoder_run.resolve() / "checkpoints"
                                       / "step_00000040.pt")
    assert record["shape"] == [2, 4, 4] and record["factor"] == 4 and record["scale"] > 0
    assert cfg["model"]["in_channels"] == 2 and cfg["model"]["image_size"] == 4
    assert cfg["data"]["channels"] == 1 and cfg["data"]["image_size"] == SIZE
    records = read_metrics(run / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in records
               if "train/loss" in r)
    # the periodic FID scored decoded images against the pixel data
    assert [r["step"] for r in records if "eval/fid" in r] == [4]


def test_from_run_returns_images_and_the_grids_are_pixels(latent_run):
    run, _ = latent_run
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    assert pipe.sample_shape == (2, 4, 4) and pipe.image_shape == (1, SIZE, SIZE)
    assert "LatentSpace((1, 16, 16) -> (2, 4, 4), f=4" in repr(pipe)
    out = pipe(3, steps=2, seed=0, return_chain=True, chain_frames=3)
    assert out.images.shape == (3, 1, SIZE, SIZE)
    assert float(out.images.abs().max()) <= 1.0
    assert out.chain.shape == (3, 3, 1, SIZE, SIZE)  # each frame decoded
    torch.testing.assert_close(out.chain[:, -1], out.images)
    # the images are the decoder's of the sampled latents
    latents = DiffusionPipeline(pipe.model, pipe.scheduler, pipe.sample_shape, device="cpu",
                                sampler=pipe.sampler)(3, steps=2, seed=0).images
    torch.testing.assert_close(out.images, pipe.latent.decode(latents))
    pil = pipe(2, steps=2, seed=0, output_type="pil").images
    assert pil[0].size == (SIZE, SIZE) and pil[0].mode == "L"
    from PIL import Image

    grid = sorted((run / "samples").glob("step_*.png"))[-1]
    assert Image.open(grid).size[0] > 2 * SIZE  # a grid of decoded 16 px images


def test_the_latents_have_unit_variance_and_are_cached(latent_run, tiny_mnist_root):
    run, _ = latent_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cached = list((tiny_mnist_root.parent / "latent-cache" / "latents").glob("*.pt"))
    assert len(cached) == 2  # the training and validation splits, encoded once each
    from diffusion.data.latents import latent_scale

    stored = [torch.load(p, weights_only=True) for p in cached]
    moments = max(stored, key=lambda s: len(s["mean"]))
    scale = latent_scale(moments["mean"], moments["std"])
    assert cfg["latent_space"]["scale"] == pytest.approx(scale)
    data = LatentDataset(moments["mean"] * scale, moments["std"] * scale, torch.zeros(len(
        moments["mean"]), dtype=torch.int64))
    draws = torch.stack([data[SampleKey(i, 0, e)][0] for e in range(8) for i in range(len(data))])
    assert float(draws.std()) == pytest.approx(1.0, rel=0.1)
    # a second run on the same data reads the cache: the files are not written again
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    again = compose_config(latent_overrides(tiny_mnist_root, cfg["latent"],
                                            "trainer.max_steps=1", "trainer.sample_every=0"))
    train_dir = run.parent / "again"
    train_dir.mkdir()
    train(again, train_dir)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes


def test_a_latent_run_evaluates_in_pixel_space(latent_run, fid_cache):
    run, _ = latent_run
    cfg = compose_config([f"run={run}", f"metrics.cache_dir={fid_cache}",
                          f"metrics.feature_epochs={EPOCHS}", "metrics.kid_subset_size=8",
                          "batch_size=8", "device=cpu", "n=16", "sampler.steps=2",
                          "plot=false"], config_name="evaluate")
    results = evaluate(cfg)
    assert len(results) == 1 and results[0].n == 16 and results[0].fid > 0
    entry = next(e for e in read_eval(run).values() if e["n"] == 16)
    assert entry["reference"] == "mnist/test"  # the pixel data's FID reference


def test_the_edits_take_and_return_images(latent_run, tiny_mnist_root):
    run, _ = latent_run
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    images = pipe(2, steps=2, seed=1).images
    assert torch.equal(pipe.img2img(images, strength=0.0, steps=4).images, images)
    edited = pipe.img2img(images, strength=0.5, steps=4, seed=0).images
    assert edited.shape == images.shape and not torch.equal(edited, images)
    mask = torch.zeros(SIZE, SIZE)
    mask[:, SIZE // 2:] = 1  # fill in the right half
    filled = pipe.inpaint(images, mask, steps=4, jump_n_sample=1, seed=0).images
    assert filled.shape == images.shape
    assert torch.equal(filled[..., : SIZE // 2], images[..., : SIZE // 2])  # kept exactly
    assert not torch.equal(filled[..., SIZE // 2:], images[..., SIZE // 2:])
    inverted = pipe.invert(images, steps=4)
    assert inverted.latents.shape == (2, *pipe.sample_shape)
    back = pipe.regenerate(inverted, steps=4).images
    assert back.shape == images.shape


def test_the_mask_goes_to_the_latents_resolution_by_max_pooling():
    ae = torch.nn.Module()
    from diffusion.models.autoencoder import AutoencoderKL

    ae = AutoencoderKL(in_channels=3, latent_channels=2, base_channels=8, norm_groups=4)
    space = LatentSpace(ae, 0.5, 8)
    mask = torch.zeros(1, 3, 8, 8)
    mask[0, 1, 5, 2] = 1  # one pixel of one channel: its whole 4x4 cell is filled in
    expected = torch.zeros(1, 1, 2, 2)
    expected[0, 0, 1, 0] = 1
    assert torch.equal(space.mask(mask), expected)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    z = space.encode(x)
    assert z.shape == (3, 2, 2, 2)
    torch.testing.assert_close(z, ae.encode(x).mean * 0.5)
    torch.testing.assert_close(space.decode(z), ae.decode(z / 0.5).clamp(-1, 1))


def test_device_latents_draw_flips_and_posteriors_from_the_generator():
    mean, std = torch.randn(6, 2, 3, 3), torch.rand(6, 2, 3, 3)
    flipped = (torch.randn(6, 2, 3, 3), torch.rand(6, 2, 3, 3))
    data = LatentDataset(mean, std, torch.arange(6), flipped=flipped)
    on_device = data.to_device("cpu")
    assert isinstance(on_device, DeviceLatents) and on_device.random_flip
    gen = torch.Generator().manual_seed(3)
    index = torch.tensor([4, 1, 2, 5])
    z, y = on_device.draw(index, gen, 4, slice(0, 4))
    gen = torch.Generator().manual_seed(3)
    coins = torch.rand(4, generator=gen) < 0.5
    eps = torch.randn(4, 2, 3, 3, generator=gen)
    m = torch.where(coins[:, None, None, None], flipped[0][index], mean[index])
    s = torch.where(coins[:, None, None, None], flipped[1][index], std[index])
    torch.testing.assert_close(z, m + s * eps)
    assert y.tolist() == [4, 1, 2, 5]
    # a DataLoader item: the same key draws the same latent
    assert torch.equal(data[SampleKey(2, 0, 1)][0], data[SampleKey(2, 0, 1)][0])
    assert not torch.equal(data[SampleKey(2, 0, 1)][0], data[SampleKey(2, 0, 2)][0])


def test_flipping_data_encodes_the_flipped_images_too(tmp_path, tiny_mnist_root,
                                                      autoencoder_run):
    run = tmp_path / "run"
    run.mkdir()
    cache = tmp_path / "cache"
    cfg = compose_config(debug_overrides(
        tiny_mnist_root, "model=basic", "model.base_channels=8", f"data.image_size={SIZE}",
        f"latent={autoencoder_run}", f"+data.cache_dir={cache}", "data.random_flip=true",
        "data.on_device=true", "trainer.max_steps=2", "trainer.sample_every=0"))
    assert train(cfg, run)["step"] == 2
    names = sorted(p.name.split("@")[0] for p in (cache / "latents").glob("*.pt"))
    assert names == ["test", "train", "train:flipped"]


def test_the_wrong_autoencoder_is_refused_in_one_sentence(tmp_path, tiny_mnist_root,
                                                          autoencoder_run, latent_run):
    with pytest.raises(ConfigError, match=r"^the autoencoder of latent=.* was trained on mnist "
                                          r"images with image_size 16, but data.image_size is "
                                          r"28: set data.image_size=16"):
        check_config(compose_config(debug_overrides(
            tiny_mnist_root, "model=basic", f"latent={autoencoder_run}")))
    with pytest.raises(ConfigError, match=r"^latent=nowhere is not a run folder .*pass the "
                                          r"folder python -m diffusion.train_autoencoder"):
        check_config(compose_config(latent_overrides(tiny_mnist_root, "nowhere")))
    run, _ = latent_run
    with pytest.raises(ConfigError, match=r"^latent=.* is not an autoencoder run"):
        check_config(compose_config(latent_overrides(tiny_mnist_root, run)))
    moved = tmp_path / "ae"
    shutil.copytree(autoencoder_run, moved)
    saved = compose_config(latent_overrides(tiny_mnist_root, autoencoder_run))
    check_config(saved)
    saved.latent = str(moved)  # a resume that names another autoencoder
    with pytest.raises(ConfigError, match=r"^this run trained on the latents of .*: a run "
                                          r"keeps its autoencoder"):
        check_config(saved)
    # the network's shape is the latents', whatever the model group says
    overridden = compose_config(latent_overrides(tiny_mnist_root, autoencoder_run,
                                                 "model.in_channels=1"))
    check_config(overridden)
    assert (overridden.model.in_channels, overridden.model.image_size) == (2, 4)


def test_the_sample_command_writes_decoded_grids_and_gifs(latent_run, tmp_path):
    from PIL import Image

    from diffusion.commands.sample import sample

    run, _ = latent_run
    cfg = compose_config([f"run={run}", "sampler.steps=2", "n=4", f"out={tmp_path}/g.png",
                          "save_tensors=true", "chain=true", "chain_frames=3"],
                         config_name="sample")
    written = sample(cfg)
    saved = torch.load(written["tensors"], weights_only=True)
    assert saved.shape == (4, 1, SIZE, SIZE)
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    torch.testing.assert_close(
        saved, pipe(4, steps=2, generator=torch.Generator().manual_seed(0)).images)
    gif = Image.open(written["gif"])
    assert gif.n_frames >= 3


def test_a_conditional_latent_run_samples_with_guidance(tmp_path, tiny_mnist_root,
                                                        autoencoder_run):
    from diffusion.sampling.guidance import Guidance

    run = tmp_path / "run"
    run.mkdir()
    cfg = compose_config(latent_overrides(tiny_mnist_root, autoencoder_run, "conditioning=class",
                                          "trainer.sample_n=10", "trainer.max_steps=2",
                                          "trainer.sample_every=2"))
    train(cfg, run)
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    y = torch.tensor([3, 7])
    guided = pipe(2, steps=2, seed=0, y=y, guidance=Guidance(scale=3.0)).images
    plain = pipe(2, steps=2, seed=0, y=y).images
    assert guided.shape == (2, 1, SIZE, SIZE) and not torch.equal(guided, plain)


@pytest.mark.parametrize("on_device", [False, True])
def test_a_latent_run_resumes_bit_exactly(tmp_path, tiny_mnist_root, autoencoder_run,
                                          on_device):
    from test_train import assert_same_state, straight_and_resumed

    args = ("model=basic", "model.base_channels=8", f"data.image_size={SIZE}",
            f"latent={autoencoder_run}", f"+data.cache_dir={tmp_path / 'cache'}",
            "data.random_flip=true", f"data.on_device={str(on_device).lower()}",
            "trainer.ckpt_every=3", "trainer.keep_last=0", "trainer.sample_every=0")
    straight, resumed = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    assert_same_state(straight, resumed)
    scales = {yaml.safe_load((run / "config.yaml").read_text())["latent_space"]["scale"]
              for run in (straight, resumed)}
    assert len(scales) == 1
