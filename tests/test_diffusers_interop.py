"""Runs that diffusers can load, and diffusers networks we can train: ``model=diffusers_unet``
is diffusers' UNet2DModel behind our backbone interface, ``diffusion.export`` writes a run as a
pipeline folder plain diffusers loads, and ``model.pretrained=`` fine-tunes a diffusers
network."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import cli_env
from diffusion.commands.train import train
from diffusion.models import AttentionUNet, DiffusersUNet
from diffusion.models.diffusers_unet import unet2d_arguments
from diffusion.runs.load import load_run
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers import DDIMScheduler, DDPMScheduler, NoiseScheduler
from test_train import run_training

diffusers = pytest.importorskip("diffusers")

NET = ["model=diffusers_unet", "model.base_channels=8", "model.norm_groups=4",
       "model.num_res_blocks=1"]


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300, env=cli_env(), cwd=cwd)


def test_the_mapped_network_has_our_attention_unets_size():
    settings = dict(in_channels=1, image_size=28, base_channels=32, channel_mult=(1, 2, 2),
                    num_res_blocks=1, attention_resolutions=(14,), norm_groups=8, num_heads=1)
    ours = sum(p.numel() for p in AttentionUNet(**settings).parameters())
    theirs = sum(p.numel() for p in DiffusersUNet(**settings).parameters())
    assert abs(theirs - ours) / ours < 0.05  # the same structure, diffusers' layer details
    config = unet2d_arguments({**settings, "_target_": "AttentionUNet"}, 1, 28)
    assert config["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")


def test_a_diffusers_unet_run_exports_and_samples_the_same_in_plain_diffusers(
        tmp_path, tiny_mnist_root):
    run, summary = run_training(tmp_path, tiny_mnist_root, *NET, "trainer.max_steps=20",
                                "trainer.ckpt_every=0", "scheduler.timestep_spacing=trailing")
    assert summary["step"] == 20
    out = tmp_path / "export"
    result = _cli("diffusion.export", f"run={run}", f"out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    pipe = diffusers.DDIMPipeline.from_pretrained(out)
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), eta=0.0,
                  num_inference_steps=10, output_type="np").images
    model, train_scheduler, _ = load_run(run)
    sampler = DDIMScheduler.over(train_scheduler)
    sampler.set_timesteps(10)
    x = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in sampler.timesteps:
            x = sampler.step(model.eval()(x, t), t, x).prev_sample
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert theirs.shape == ours.shape == (4, 28, 28, 1)
    assert abs(theirs - ours).max() <= 1e-4


def test_our_own_networks_are_refused_by_export_in_one_sentence(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8")
    result = _cli("diffusion.export", f"run={run}", f"out={tmp_path / 'out'}")
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: run={run} trained model=BasicUNet, our own network, which diffusers cannot "
        "load with these weights: export runs trained with model=diffusers_unet (the same "
        "settings map onto it).")
    assert not (tmp_path / "out").exists()


def test_a_continuous_time_run_is_refused_by_export_in_one_sentence(tmp_path, tiny_mnist_root):
    """A diffusers network trains on a VE process (float times) but diffusers' DDPM and DDIM
    pipelines cannot run that process: export says so before writing anything."""
    run, summary = run_training(tmp_path, tiny_mnist_root, "model=diffusers_unet",
                                "model.base_channels=8", "model.norm_groups=4",
                                "scheduler=ve", "objective=dsm", "sampler=pc",
                                "sampler.steps=2")
    assert summary["step"] == 4
    result = _cli("diffusion.export", f"run={run}", f"out={tmp_path / 'out'}")
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: run={run} trained the continuous-time process VEProcess, which diffusers' "
        "DDPM and DDIM pipelines cannot run: export runs trained with scheduler=ddpm.")
    assert not (tmp_path / "out").exists()


def test_a_diffusers_network_is_fine_tuned_from_its_folder(tmp_path, tiny_mnist_root):
    config = unet2d_arguments({"base_channels": 8, "channel_mult": (1, 2, 2),
                               "num_res_blocks": 1, "norm_groups": 4}, 1, 28)
    saved = diffusers.UNet2DModel(**config)
    saved.save_pretrained(tmp_path / "pretrained")
    loaded = DiffusersUNet(in_channels=1, image_size=28, pretrained=str(tmp_path / "pretrained"))
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                  loaded.net.state_dict().values(), strict=True))
    run, summary = run_training(tmp_path, tiny_mnist_root, "model=diffusers_unet",
                                f"model.pretrained={tmp_path / 'pretrained'}")
    assert summary["step"] == 4
    # the run records the network, so it loads and resumes without the pretrained folder
    (tmp_path / "pretrained").rename(tmp_path / "moved")
    model, _, cfg = load_run(run)
    assert cfg["model"]["unet_config"]["block_out_channels"] == [8, 16, 16]
    assert model(torch.zeros(1, 1, 28, 28), 10).shape == (1, 1, 28, 28)
    resumed = OmegaConf.load(run / "config.yaml")
    resumed.resume = str(run)
    resumed.trainer.max_steps = 6
    assert train(resumed, run)["step"] == 6
    with pytest.raises(Exception, match=r"has in_channels=1 but this run needs 3"):
        DiffusersUNet(in_channels=3, image_size=28, pretrained=str(tmp_path / "moved"))


SPACING = {"ddpm": "leading", "ddim": "leading"}  # where diffusers' last step agrees with ours


@pytest.mark.parametrize("name", sorted(set(NoiseScheduler.SAMPLERS) - {"dpmpp_3m"}))
def test_every_sampler_on_a_diffusers_unet_matches_diffusers_loop(name):
    """Our pipeline, with diffusers' UNet2DModel as the backbone, against diffusers' scheduler
    of the same name running diffusers' own loop on that network: the same images.
    (``dpmpp_3m`` differs on purpose: diffusers' third order is second order, see README.)"""
    torch.manual_seed(0)
    model = DiffusersUNet(in_channels=1, image_size=16, base_channels=16, channel_mult=(1, 2),
                          num_res_blocks=1, norm_groups=8, num_heads=2).eval()
    spec = SamplerSpec(name, 6, SPACING.get(name, "trailing"),
                       dict(NoiseScheduler.SAMPLER_PRESETS[name]))
    trained = DDPMScheduler(clip_sample=False)  # diffusers' Euler and DPM-Solver cannot clip
    ours = spec.build(trained)
    theirs = getattr(diffusers, type(ours).__name__).from_config(ours.diffusers_config())
    pipe = DiffusionPipeline(model, trained, (1, 16, 16), device="cpu")
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    images = pipe(2, steps=6, sampler=ours, noise=noise,
                  generator=[torch.Generator().manual_seed(s) for s in (2, 3)]).images

    theirs.set_timesteps(6)
    x = noise * theirs.init_noise_sigma
    generators = [torch.Generator().manual_seed(s) for s in (2, 3)]
    kwargs = {"generator": generators} if "generator" in inspect.signature(
        theirs.step).parameters else {}
    with torch.no_grad():
        for t in theirs.timesteps:
            out = model.net(theirs.scale_model_input(x, t), t).sample
            x = theirs.step(out, t, x, **kwargs).prev_sample
    worst = float((images - x).abs().max() / x.abs().max().clamp(min=1.0))
    assert worst < 1e-4, worst
