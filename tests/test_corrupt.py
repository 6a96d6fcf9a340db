"""The course's corrupt-and-denoise baseline (``objective=corrupt``): uniform noise, the
x_0 objective, the course's sampler step for step, a run from the command line, and the
refusals (samplers that start from Gaussian noise, editing)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.errors import ConfigError
from diffusion.processes import CorruptProcess
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler
from diffusion.training.score_matching import ScoreMatching


def test_the_noise_is_uniform_and_the_objective_is_the_courses():
    process = CorruptProcess()
    objective = ScoreMatching(process, weighting="none")
    g = torch.Generator().manual_seed(0)
    u = objective.sample_noise((200_000,), torch.device("cpu"), g)
    # U(-1, 1): inside the interval, mean 0, variance 1/3, flat histogram
    assert float(u.abs().max()) < 1.0
    assert abs(float(u.mean())) < 0.01 and abs(float(u.var()) - 1 / 3) < 0.01
    counts = torch.histc(u, bins=10, min=-1, max=1)
    assert float((counts / counts.mean() - 1).abs().max()) < 0.03
    # the same draw as torch.randn, carried through the normal CDF: 2 Phi(z) - 1
    z = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    phi = 0.5 * (1 + torch.special.erf(z / math.sqrt(2)))
    torch.testing.assert_close(process.noise_from_normal(z), 2 * phi - 1)
    # x_t = (1 - a) x_0 + a u, the network sees c_in x_t and must output x_0
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = objective.sample_noise(x0.shape, torch.device("cpu"), g)
    a = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    x_in, _, target = objective.noised(x0, noise, a)
    corrupted = (1 - a.reshape(-1, 1, 1, 1)) * x0 + a.reshape(-1, 1, 1, 1) * noise
    c_in = process.c_in(a).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_in.double(), corrupted * c_in)
    torch.testing.assert_close(target, x0)
    pred = torch.randn_like(x0)
    assert float(objective.loss(pred, target, a)) == pytest.approx(
        float(((pred - x0) ** 2).mean()), rel=1e-6)


class Contracting(torch.nn.Module):
    """A network whose x_0 prediction depends on its input and time: tanh(0.7 x_in) + t / 2000."""

    num_classes = None

    def forward(self, x_in, model_time, y=None):
        return torch.tanh(0.7 * x_in) + model_time.reshape(-1, 1, 1, 1) / 2000


@pytest.mark.parametrize("steps", [1, 5, 12])
def test_the_sampler_is_the_courses_loop(steps):
    """From x = u (uniform), for i = 0..n-1: x_0 = net(x) at amount 1 - i / n, then
    x <- x (1 - 1 / (n - i)) + x_0 / (n - i)  (the course's mix_factor)."""
    process = CorruptProcess()
    net = Contracting()
    pipe = DiffusionPipeline(net, process, (1, 6, 6), device="cpu")
    assert (pipe.sampler.name, pipe.sampler.steps) == ("corrupt", 10)
    z = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    got = pipe(4, noise=z, steps=steps, output_type="pt").images
    x = process.noise_from_normal(z).double()
    for i in range(steps):
        amount = 1 - i / steps
        t_model = process.model_time(torch.tensor(amount, dtype=torch.float64))
        with torch.no_grad():
            x0 = net((x * process.c_in(amount)).float(),
                     t_model.float().expand(len(x))).double()
        mix = 1 / (steps - i)
        x = x * (1 - mix) + x0 * mix
    # the last step lands on the prediction itself (mix = 1)
    torch.testing.assert_close(got.double(), x, atol=2e-6, rtol=0)


def test_samplers_that_start_from_gaussian_noise_are_refused():
    pipe = DiffusionPipeline(Contracting(), CorruptProcess(), (1, 4, 4), device="cpu")
    for name in ("flow_heun", "flow_midpoint"):  # the velocity samplers start from its noise
        assert torch.isfinite(pipe(n=2, steps=2, sampler=name, output_type="pt").images).all()
    with pytest.raises(ValueError, match="sample it with sampler=corrupt"):
        pipe(n=2, steps=2, sampler="edm_euler")
    with pytest.raises(ConfigError, match="noise is uniform"):  # a scheduler object as given
        pipe(n=2, steps=2, sampler=DDIMScheduler())
    with pytest.raises(ConfigError, match="uniform"):
        pipe.img2img(torch.zeros(2, 1, 4, 4), strength=0.5, steps=2)


def test_the_objective_refuses_another_process():
    from diffusion.processes import FlowProcess
    from diffusion.training.score_matching import CorruptAndDenoise

    with pytest.raises(ConfigError, match="add scheduler=corrupt sampler=corrupt"):
        CorruptAndDenoise(FlowProcess(prediction_type="sample"), weighting="none")


def test_a_corrupt_run_trains_and_samples(tmp_path, tiny_mnist_root):
    from omegaconf import OmegaConf

    from diffusion.commands.sample import sample
    from hydra_utils import compose_config
    from test_train import run_training

    run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                "model.base_channels=8", "objective=corrupt")
    # an untrained network outputting ~0 has an x_0 MSE of about E[x_0^2] (~0.7 on MNIST)
    assert summary["step"] == 4 and 0.2 < summary["train/loss"] < 2.0
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.scheduler._target_ == "diffusion.processes.CorruptProcess"
    assert (saved.sampler.name, saved.scheduler.prediction_type) == ("corrupt", "sample")
    cfg = compose_config([f"run={run}", "sampler=corrupt", "sampler.steps=3", "n=2", "device=cpu",
                          "save_tensors=true", f"out={tmp_path / 'corrupt.png'}"],
                         config_name="sample")
    images = torch.load(sample(cfg)["tensors"], weights_only=True)
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
