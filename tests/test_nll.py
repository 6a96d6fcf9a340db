"""Bits/dim of test images (``diffusion.metrics.nll``, ``diffusion.evaluate metrics=nll``):
equal to the closed form for an exact model of Gaussian data, for a continuous process and a
DDPM table alike; and the command on trained runs, with its record and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffusion.commands.evaluate import evaluate
from diffusion.config.metrics import check_nll_metrics
from diffusion.metrics.likelihood import dequantize
from diffusion.metrics.nll import score_nll
from diffusion.processes import VEProcess, VPProcess
from diffusion.schedulers import DDPMScheduler
from diffusion.schedulers.continuous import as_process
from hydra_utils import compose_config
from test_train import run_training

SD = 0.6  # the data's standard deviation


class ExactGaussian(nn.Module):
    """E[eps | x_in] for data N(0, SD^2 I) as the network sees it: x_in = a x_0 + s eps at
    model time (model_steps - 1) t, so x_in ~ N(0, a^2 SD^2 + s^2) and E[eps | x_in] =
    s x_in / (a^2 SD^2 + s^2)."""

    num_classes = None

    def __init__(self, process):
        super().__init__()
        self.process = process

    def forward(self, x, t, y=None):
        time = t.double()[0] / (self.process.model_steps - 1)
        a, s = self.process.normalised(time)
        return (s * x.double() / (a**2 * SD**2 + s**2)).float()


@pytest.mark.parametrize("noise", ["vp", "ve", "ddpm"])
def test_ode_bits_per_dim_of_an_exact_model_equal_the_closed_form(noise):
    scheduler = {"vp": VPProcess(), "ve": VEProcess(sigma_min=0.01, sigma_max=20.0),
                 "ddpm": DDPMScheduler()}[noise]
    process = as_process(scheduler)
    images = torch.randint(60, 196, (3, 1, 2, 2), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    result = score_nll(ExactGaussian(process), scheduler, images, trace="exact", vlb=False,
                       seed=5, rtol=1e-7, atol=1e-7)
    x = dequantize(images.float() / 127.5 - 1, torch.Generator().manual_seed(5))
    t_min = process.t_min
    var = float(process.alpha(t_min) ** 2 * SD**2 + process.sigma(t_min) ** 2)
    logp = -0.5 * (x.flatten(1) ** 2).sum(1) / var - 2 * math.log(2 * math.pi * var)
    expected = float((-logp / (4 * math.log(2)) + 7).mean())
    assert result.bits_per_dim == pytest.approx(expected, abs=2e-3)
    assert result.n == 3 and result.vlb_bits_per_dim is None and result.nfe > 10


def test_hutchinson_estimate_is_unbiased_around_the_exact_trace():
    process = VPProcess()
    images = torch.randint(0, 256, (64, 1, 2, 2), generator=torch.Generator().manual_seed(2),
                           dtype=torch.uint8)
    model = ExactGaussian(process)
    exact = score_nll(model, process, images, trace="exact", seed=3)
    estimate = score_nll(model, process, images, trace="hutchinson", seed=3)
    # the same dequantised points (drawn first); the probes' noise averages out over 64 images
    assert estimate.bits_per_dim == pytest.approx(exact.bits_per_dim, abs=4 * estimate.stderr)


def test_bad_images_are_one_sentence():
    with pytest.raises(ValueError, match=r"^images must be uint8 \(N, C, H, W\); got "
                                         r"torch.float32 \(2, 4\).$"):
        score_nll(nn.Identity(), VPProcess(), torch.zeros(2, 4))


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, tiny_mnist_root):
    tmp = tmp_path_factory.mktemp("nll")
    run, _ = run_training(tmp, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler.num_train_timesteps=50", "trainer.sample_every=0",
                          "trainer.val_every=0", "sampler.steps=2")
    return run


def test_evaluate_nll_scores_a_ddpm_run_by_the_ode_and_the_bound(ddpm_run, tiny_mnist_root,
                                                                  capsys):
    cfg = compose_config([f"run={ddpm_run}", "metrics=nll", "n=6", "metrics.batch_size=4",
                          "metrics.rtol=1e-3", "metrics.atol=1e-3", "device=cpu",
                          f"data_root={tiny_mnist_root}"], config_name="evaluate")
    [result] = evaluate(cfg)
    assert result.n == 6 and math.isfinite(result.bits_per_dim)
    # an untrained network's bound is far above the data's 8 bits/dim ceiling of a uniform
    # model only in the KL terms; both figures are positive
    assert result.bits_per_dim > 0 and result.vlb_bits_per_dim > 0
    record = json.loads((ddpm_run / "nll.json").read_text())["entries"]
    [entry] = record.values()
    assert entry["bits_per_dim"] == result.bits_per_dim and entry["split"] == "test"
    assert "metrics=nll" in entry["command"] and "metrics.trace=hutchinson" in entry["command"]
    assert "NLL " in capsys.readouterr().out


def test_evaluate_nll_scores_a_continuous_run_whatever_the_sampler_group_says(
        tmp_path, tiny_mnist_root):
    """evaluate.yaml's default sampler (ddim) cannot walk a VE process, but metrics=nll
    draws no samples: it scores the run, without a bound (a continuous process has none)."""
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler=ve", "objective=dsm", "sampler=pc", "sampler.steps=2",
                          "trainer.sample_every=0", "trainer.val_every=0")
    cfg = compose_config([f"run={run}", "metrics=nll", "n=4", "metrics.batch_size=4",
                          "metrics.rtol=1e-3", "metrics.atol=1e-3", "device=cpu",
                          f"data_root={tiny_mnist_root}"], config_name="evaluate")
    [result] = evaluate(cfg)
    assert math.isfinite(result.bits_per_dim) and result.vlb_bits_per_dim is None


def test_evaluate_nll_refuses_an_unknown_key(ddpm_run):
    cfg = compose_config([f"run={ddpm_run}", "metrics=nll", "+metrics.features=domain"],
                         config_name="evaluate")
    with pytest.raises(ValueError, match=r"^metrics.features is not an option of metrics=nll: "
                                         r"use one of atol, batch_size, name, rtol, seed, "
                                         r"trace, vlb.$"):
        evaluate(cfg)
    with pytest.raises(ValueError, match=r"^metrics.features is not an option of metrics=nll: "
                                         r"use one of trace, rtol, atol, vlb, batch_size, "
                                         r"seed.$"):  # the library's own check
        check_nll_metrics(cfg.metrics)
