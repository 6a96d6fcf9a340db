"""The KL autoencoder of latent diffusion (``diffusion.train_autoencoder``): its shapes and
KL against closed forms, PSNR by definition, a run that learns, scores itself and resumes
exactly, and sizes that do not fit refused in one sentence."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.train_autoencoder import COMMAND, train_autoencoder
from diffusion.errors import ConfigError
from diffusion.models.autoencoder import AutoencoderKL, DiagonalGaussian, PatchDiscriminator
from diffusion.training.autoencoder import psnr
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config


def ae_overrides(data_root, *extra: str) -> list[str]:
    """A small autoencoder (f = 4, 2 latent channels) on the tiny test data, on the CPU."""
    return [f"paths.data_dir={data_root}", "device=cpu", "autoencoder.base_channels=8",
            "autoencoder.norm_groups=4", "autoencoder.latent_channels=2", "batch_size=16",
            "eval_n=32", "sample_n=4", "progress=false", "rfid=false", *extra]


def test_shapes_follow_the_downsampling_factor():
    for mult, factor in (((1, 2, 2), 4), ((1, 2, 2, 4), 8), ((1,), 1)):
        model = AutoencoderKL(in_channels=3, latent_channels=4, base_channels=8,
                              channel_mult=mult, norm_groups=4, image_size=32)
        x = torch.randn(2, 3, 32, 32)
        posterior = model.encode(x)
        assert model.downsample_factor == factor
        assert posterior.mean.shape == (2, 4, 32 // factor, 32 // factor)
        assert model.latent_shape(32) == (4, 32 // factor, 32 // factor)
        recon, _ = model(x, generator=torch.Generator().manual_seed(0))
        assert recon.shape == x.shape


def test_sizes_that_do_not_fit_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"image_size 28 is not a multiple of the downsampling "
                                         r"factor 8 .*use one level fewer"):
        AutoencoderKL(in_channels=1, base_channels=8, channel_mult=(1, 2, 2, 4), norm_groups=4,
                      image_size=28)
    with pytest.raises(ValueError, match=r"norm_groups=16; 8 does not"):
        AutoencoderKL(base_channels=8, norm_groups=16)
    model = AutoencoderKL(in_channels=1, base_channels=8, norm_groups=4)
    with pytest.raises(ValueError, match=r"multiples of 4; got \(30, 30\)"):
        model.encode(torch.zeros(1, 1, 30, 30))


def test_the_kl_is_the_closed_form_per_sample():
    gen = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 4, 5, 5, generator=gen)
    posterior = DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(posterior.kl(), expected, rtol=1e-5, atol=1e-5)
    # a sample has the posterior's mean and std
    draws = torch.stack([posterior.sample(torch.Generator().manual_seed(i)) for i in range(400)])
    torch.testing.assert_close(draws.mean(0), mean, atol=0.35, rtol=0)
    assert torch.equal(posterior.mode(), mean)


def test_psnr_is_its_definition():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.2  # 0.1 on [0, 1]: MSE 0.01, 20 dB
    y[1, :, :2] += 0.2  # half the pixels: MSE 0.005
    torch.testing.assert_close(psnr(y, x), torch.tensor([20.0, 10 * math.log10(200)]))


def test_the_patch_discriminator_gives_a_map_of_logits():
    logits = PatchDiscriminator(in_channels=1, base_channels=8)(torch.randn(2, 1, 28, 28))
    assert logits.ndim == 4 and logits.shape[:2] == (2, 1)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, tiny_mnist_root):
    run = tmp_path_factory.mktemp("autoencoder")
    cfg = compose_config(ae_overrides(tiny_mnist_root, "steps=120", "log_every=20",
                                      "eval_every=60"), config_name="train_autoencoder")
    return run, train_autoencoder(cfg, run)


def test_a_run_learns_to_reconstruct_and_writes_its_folder(ae_run):
    run, summary = ae_run
    records = read_metrics(run / "metrics.jsonl")
    rec = [r["train/rec_per_pixel"] for r in records if "train/rec_per_pixel" in r]
    # L1 per pixel of a batch of 16: about 0.45 at step 20, 0.12-0.15 by step 120 (measured)
    assert len(rec) == 6 and sum(rec[-2:]) / 2 < 0.7 * rec[0]
    scores = [r["eval/psnr"] for r in records if "eval/psnr" in r]
    assert len(scores) == 2 and scores[1] > scores[0]
    saved = json.loads((run / "eval.json").read_text())
    assert saved["psnr_n"] == 32 and saved["psnr"] == summary["psnr"] > 10
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_00000060.png", "step_00000120.png"]
    assert json.loads((run / "data.json").read_text())["train_images"] == 64
    state = torch.load(run / "checkpoints" / "step_00000120.pt", weights_only=True)
    assert state["kind"] == "autoencoder" and state["step"] == 120 and "ema" in state


def test_a_resumed_run_matches_the_uninterrupted_one(tmp_path, tiny_mnist_root, ae_run):
    whole, _ = ae_run
    run = tmp_path / "half"
    cfg = compose_config(ae_overrides(tiny_mnist_root, "steps=60", "log_every=40",
                                      "eval_every=60"), config_name="train_autoencoder")
    train_autoencoder(cfg, run)
    resume = OmegaConf.load(run / "config.yaml")  # what the resumed command composes
    resume.steps, resume.resume = 120, str(run)
    train_autoencoder(resume, run)
    a = torch.load(whole / "checkpoints" / "step_00000120.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "step_00000120.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key


def test_a_resume_may_not_change_what_it_learns(tmp_path, ae_run):
    run, _ = ae_run
    with pytest.raises(ConfigError, match=r"^lr=1: a resume continues the autoencoder as it "
                                          r"was trained, so only steps, "):
        COMMAND.prepare_resume(str(run), ["lr=1"])


def test_a_size_that_does_not_fit_the_data_is_refused_before_the_folder(tmp_path,
                                                                       tiny_mnist_root):
    cfg = compose_config(ae_overrides(tiny_mnist_root, "autoencoder=kl_f8", "steps=2"),
                         config_name="train_autoencoder")
    with pytest.raises(ConfigError, match=r"image_size 28 is not a multiple of the "
                                          r"downsampling factor 8"):
        train_autoencoder(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_adversarial_loss_joins_at_disc_start(tmp_path, tiny_mnist_root):
    cfg = compose_config(ae_overrides(tiny_mnist_root, "steps=4", "log_every=1", "eval_every=0",
                                      "disc_weight=0.5", "disc_start=3"),
                         config_name="train_autoencoder")
    train_autoencoder(cfg, tmp_path / "gan")
    records = [r for r in read_metrics(tmp_path / "gan" / "metrics.jsonl") if "train/loss" in r]
    assert ["train/d_loss" in r for r in records] == [False, False, True, True]
    assert all(r["train/disc_weight"] > 0 for r in records[2:])


def test_the_reconstruction_fid_is_scored_against_the_held_out_split(tmp_path,
                                                                     tiny_mnist_root):
    cfg = compose_config(ae_overrides(tiny_mnist_root, "steps=2", "eval_every=0", "rfid=true",
                                      f"metrics.cache_dir={tmp_path / 'cache'}",
                                      "metrics.feature_epochs=2", "metrics.kid_subset_size=8"),
                         config_name="train_autoencoder")
    summary = train_autoencoder(cfg, tmp_path / "run")
    rfid = json.loads((tmp_path / "run" / "eval.json").read_text())["rfid"]
    assert rfid == summary["rfid"]
    assert rfid["n"] == 32 and rfid["fid"] > 0 and rfid["floor"] >= 0


def test_a_run_loads_back_with_its_ema_weights(ae_run, tmp_path):
    from diffusion.errors import RunError
    from diffusion.runs.load import load_autoencoder

    run, _ = ae_run
    model = load_autoencoder(run)
    state = torch.load(run / "checkpoints" / "step_00000120.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["ema"]["model"][name]), name
    assert not model.training
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(RunError, match=r"^latent=.* is not an autoencoder run"):
        load_autoencoder(tmp_path)


def test_latents_are_cached_and_encoded_again_when_the_checkpoint_changes(ae_run, tmp_path,
                                                                          monkeypatch):
    import os

    from diffusion.data import latents
    from diffusion.runs.load import load_autoencoder

    run, _ = ae_run
    checkpoint = run / "checkpoints" / "step_00000120.pt"
    model = load_autoencoder(run, checkpoint)
    images = (torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
              * 255).to(torch.uint8)
    calls = []
    real = latents.encode_images
    monkeypatch.setattr(latents, "encode_images",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    mean, std = latents.cached_latents(model, checkpoint, images, "mnist", "train",
                                       cache_dir=tmp_path)
    again = latents.cached_latents(model, checkpoint, images, "mnist", "train",
                                   cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(again[0], mean) and torch.equal(again[1], std)
    # the round trip: the cached means decode to the model's own reconstructions
    decoded = model.decode(mean)
    direct = model.decode(model.encode(images.float() / 127.5 - 1).mode())
    torch.testing.assert_close(decoded, direct, rtol=1e-5, atol=1e-5)
    stat = checkpoint.stat()  # the run trained further: a new modification time
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    latents.cached_latents(model, checkpoint, images, "mnist", "train", cache_dir=tmp_path)
    assert len(calls) == 2
    latents.cached_latents(model, checkpoint, images[:10], "mnist", "train",
                           cache_dir=tmp_path)  # other images
    assert len(calls) == 3
    # the scale brings posterior samples to unit variance over the set
    scale = latents.latent_scale(mean, std)
    draws = torch.stack([mean + std * torch.randn(mean.shape, generator=torch.Generator()
                                                  .manual_seed(i)) for i in range(50)])
    assert float((draws * scale).std()) == pytest.approx(1.0, rel=0.02)
