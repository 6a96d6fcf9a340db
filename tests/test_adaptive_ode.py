"""The adaptive probability-flow ODE sampler (``sampler=rk45``): with the exact epsilon of
Gaussian data the ODE is linear, so its end point is known in closed form; through the pipeline
it counts its evaluations, honours its cap, records a chain, and the evaluate command records
the NFE it measured."""

from __future__ import annotations

import pytest
import torch

from diffusion.errors import ConfigError
from diffusion.processes import DiscreteProcess, VEProcess, VPProcess
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers import DDPMScheduler
from diffusion.schedulers.adaptive_ode import AdaptiveODESampler

C = 0.5  # the data: N(0, C^2 I)


def _exact_output(process):
    """The exact epsilon network of N(0, C^2 I) data for ``process``, given c_in(t) x_t and
    the network's time."""
    def model_fn(seen, model_time):
        t = float(model_time) / (process.model_steps - 1)
        x_t = seen.double() / float(process.c_in(t))
        var = float(process.alpha(t)) ** 2 * C**2 + float(process.sigma(t)) ** 2
        return (float(process.sigma(t)) * x_t / var).to(seen.dtype)
    return model_fn


def _std(process, t):
    return float((process.alpha(t) ** 2 * C**2 + process.sigma(t) ** 2).sqrt())


@pytest.mark.parametrize("process", [VPProcess(), VEProcess(sigma_max=20.0),
                                     DiscreteProcess.of(DDPMScheduler())],
                         ids=["vp", "ve", "ddpm-table"])
def test_the_ode_of_gaussian_data_ends_where_the_closed_form_says(process):
    """For N(0, C^2) data the flow maps x_1 to x_1 std(t_min) / std(1) exactly (each
    marginal is N(0, std(t)^2) and the map is linear); Tweedie then scales by
    alpha C^2 / std(t_min)^2."""
    sampler = AdaptiveODESampler(process, denoise="none")
    sampler.set_timesteps(1000)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64) * sampler.init_noise_sigma
    end, states, _ = sampler.solve(_exact_output(process), x1)
    assert states is None
    expected = x1 * _std(process, process.t_min) / _std(process, 1.0)
    torch.testing.assert_close(end, expected, rtol=1e-3, atol=1e-4)
    assert 10 <= sampler.evaluations[-1] < 1000

    tweedie = AdaptiveODESampler(process)
    tweedie.set_timesteps(1000)
    x0, _, _ = tweedie.solve(_exact_output(process), x1)
    shrink = float(process.alpha(process.t_min)) * C**2 / _std(process, process.t_min) ** 2
    torch.testing.assert_close(x0, expected * shrink, rtol=1e-3, atol=1e-4)
    assert tweedie.evaluations[-1] == sampler.evaluations[-1] + 1


def test_tighter_tolerances_take_more_evaluations():
    process = VPProcess()
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counts = []
    for tol in (1e-2, 1e-5):
        sampler = AdaptiveODESampler(process, rtol=tol, atol=tol)
        sampler.set_timesteps(1000)
        sampler.solve(_exact_output(process), x1)
        counts.append(sampler.evaluations[-1])
    assert counts[0] < counts[1]


class _ExactDDPM(torch.nn.Module):
    """A DDPM-trained network: the exact epsilon of N(0, C^2) pixels, told DDPM's timestep."""

    num_classes = None

    def __init__(self, process):
        super().__init__()
        self.process = process

    def forward(self, x, t, y=None):
        a2 = self.process.alpha(t.double() / 999).reshape(-1, 1, 1, 1) ** 2
        return (x.double() * (1 - a2).sqrt() / (a2 * C**2 + 1 - a2)).float()


def test_the_pipeline_runs_rk45_by_name_with_a_cap_and_a_chain():
    training = DDPMScheduler()
    pipe = DiffusionPipeline(_ExactDDPM(DiscreteProcess.of(training)), training, (1, 8, 8),
                             device="cpu")
    out = pipe(64, steps=1000, sampler="rk45", seed=0, return_chain=True, chain_frames=5)
    assert float(out.images.std()) == pytest.approx(C, rel=0.08)
    assert out.chain.shape == (64, 5, 1, 8, 8)
    assert out.chain_timesteps[0] == 999 and out.chain_timesteps[-1] == -1
    torch.testing.assert_close(out.chain[:, -1], out.images)
    assert float(out.chain[:, 0].std()) == pytest.approx(1.0, rel=0.08)  # x_1 ~ N(0, I)
    # the batch size does not change a deterministic sampler's images beyond the tolerance
    again = pipe(64, steps=1000, sampler="rk45", seed=0, batch_size=16).images
    torch.testing.assert_close(again, out.images, rtol=0, atol=5e-3)

    with pytest.raises(ConfigError, match="more than 4 network evaluations.*raise "
                                          "sampler.steps"):
        pipe(4, steps=5, sampler="rk45", seed=0)


def test_the_rk45_group_option_builds_over_a_continuous_run():
    spec = SamplerSpec.from_config({"name": "rk45", "steps": None, "timestep_spacing": None,
                                    "rtol": 1e-3, "atol": 1e-3, "method": "RK23",
                                    "denoise": "none"})
    spec.check(1000, scheduler=VPProcess())
    built = spec.build(VPProcess())
    assert isinstance(built, AdaptiveODESampler) and built.method == "RK23"
    assert not spec.stochastic and spec.step_counts(1000) == [1000]
    with pytest.raises(ConfigError, match="sampler.method must be one of"):
        SamplerSpec.from_config({"name": "rk45", "method": "euler"}).check(
            1000, scheduler=VPProcess())
    with pytest.raises(ConfigError, match="timestep_spacing does not apply"):
        SamplerSpec.from_config({"name": "rk45", "timestep_spacing": "trailing"})


def test_an_adaptive_sampler_has_a_measured_not_a_computed_nfe():
    from diffusion.reporting.figures import _curve, network_evaluations

    with pytest.raises(ValueError, match="picks its own steps"):
        network_evaluations("rk45", 1000)
    entry = {"sampler": "rk45", "steps": 1000, "n": 100, "nfe": 131.5}
    assert _curve(entry, "nfe")[1] == 131.5
