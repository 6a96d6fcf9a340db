"""Flow matching on the process abstraction: the straight path and its velocity, the time
distributions of ``objective=flow`` (uniform, logit-normal, SD3's mode sampling, the shift), the
velocity samplers step for step against diffusers' ``FlowMatchEulerDiscreteScheduler`` and
``FlowMatchHeunDiscreteScheduler``, their orders on Gaussian data, and a run from the command
line."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.processes import FlowProcess, VPProcess
from diffusion.schedulers.velocity import VelocityScheduler, shift_times
from diffusion.training.score_matching import ScoreMatching

SHAPE = (3, 2, 4, 4)
F64 = torch.float64


def test_the_straight_path_and_its_velocity():
    process = FlowProcess()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(SHAPE, generator=g, dtype=F64), torch.randn(SHAPE, generator=g,
                                                                        dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    x = process.add_noise(x0, eps, t)
    torch.testing.assert_close(x, (1 - t).reshape(-1, 1, 1, 1) * x0 + t.reshape(-1, 1, 1, 1) * eps)
    u = process.training_target(x0, eps, t)
    torch.testing.assert_close(u, eps - x0)
    got_x0, got_eps = process.pred_x0_eps(u, x, t)  # exact at both ends
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    assert process.prior_std == 1.0 and float(process.time_of(torch.tensor(1.0))) == 0.5
    # the velocity of any process: its path's derivative, checked by finite differences
    vp = VPProcess(prediction_type="flow_prediction")
    h, s = 1e-6, 0.4
    numeric = (vp.add_noise(x0, eps, s + h) - vp.add_noise(x0, eps, s - h)) / (2 * h)
    torch.testing.assert_close(vp.training_target(x0, eps, s), numeric, rtol=1e-6, atol=1e-8)
    got_x0, got_eps = vp.pred_x0_eps(vp.training_target(x0, eps, s), vp.add_noise(x0, eps, s), s)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_flow_prediction_weights_carry_the_epsilon_error():
    """weights(t) |d u|^2 = |d eps|^2 for the sigma2 weighting: the conversion is exact."""
    process = FlowProcess()
    objective = ScoreMatching(process)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    g = torch.Generator().manual_seed(1)
    x0, eps, du = (torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(3))
    x = process.add_noise(x0, eps, t)
    u = process.training_target(x0, eps, t)
    _, eps_off = process.pred_x0_eps(u + du, x, t)
    d_eps = (eps_off - eps).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(objective.weights(t).double() * du.pow(2).flatten(1).sum(1),
                               d_eps, rtol=1e-6, atol=0)


def test_the_time_distributions_of_objective_flow():
    process, n, cpu = FlowProcess(), 40_000, torch.device("cpu")

    def draw(**options):
        return ScoreMatching(process, weighting="none", **options).sample_timesteps(
            n, cpu, torch.Generator().manual_seed(0))

    logit = torch.logit(draw(t_sampling="logit_normal", logit_mean=0.5, logit_std=0.8))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.02)
    uniform = draw()
    assert 0 <= float(uniform.min()) and float(uniform.max()) <= 1
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.01)
    # SD3's mode sampling with s = 1.29: its density is heavier in the middle than uniform's
    mode = draw(t_sampling="mode")
    middle = ((mode > 0.25) & (mode < 0.75)).double().mean()
    assert 0 <= float(mode.min()) and float(mode.max()) <= 1 and float(middle) > 0.6
    # the shift moves every t to shift t / (1 + (shift - 1) t): the median 0.5 goes to 0.75
    shifted = draw(shift=3.0)
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01)
    torch.testing.assert_close(shift_times(torch.tensor([0.5], dtype=F64), 3.0),
                               torch.tensor([0.75], dtype=F64))
    with pytest.raises(ValueError, match="mode_scale must be"):
        ScoreMatching(process, mode_scale=2.0)


def _velocity_network(x_in, model_time):
    """A fixed smooth 'network' of its input and time: its output is read as a velocity."""
    tt = (model_time.double() / 999).reshape(-1, *([1] * (x_in.ndim - 1)))
    return torch.tanh(x_in.double() * (0.6 + 0.3 * tt)) * (0.4 + tt) - 0.2 * tt


def _run_ours(sched, network, x):
    for model_time in sched.timesteps:
        out = network(sched.scale_model_input(x, model_time), model_time.reshape(1).double())
        x = sched.step(out, model_time, x).prev_sample
    return x


@pytest.mark.parametrize("method, cls, shift", [
    ("euler", "FlowMatchEulerDiscreteScheduler", 1.0),
    ("euler", "FlowMatchEulerDiscreteScheduler", 3.0),
    ("heun", "FlowMatchHeunDiscreteScheduler", 1.0)], ids=["euler", "euler-shift3", "heun"])
def test_velocity_samplers_match_diffusers_flow_match_schedulers(method, cls, shift):
    """The same network outputs, grid and start: the end agrees with diffusers' to float32
    rounding. diffusers tells the network 1000 t and feeds it x_t itself; ours tells it 999 t
    and feeds c_in x_t, so the test's network is given what ours would see at each call."""
    diffusers = pytest.importorskip("diffusers")
    process = FlowProcess()
    n = 8
    ours = VelocityScheduler(process, method=method, shift=shift)
    ours.set_timesteps(n)
    theirs = getattr(diffusers, cls)(shift=shift)
    if shift != 1.0:  # their default grid shifts its lower end twice: give both one grid
        theirs.set_timesteps(sigmas=torch.linspace(1, 1e-3, n).tolist())
    else:
        theirs.set_timesteps(n)
    torch.testing.assert_close(ours.times[:n].float(), theirs.sigmas[::2 if method == "heun"
                                                                      else 1][:n],
                               rtol=1e-6, atol=1e-7)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    x = x_T.clone()
    for timestep in theirs.timesteps:
        t = timestep.double() / 1000
        seen = x.double() * process.c_in(t)
        out = _velocity_network(seen, process.model_time(t).float().double().reshape(1))
        x = theirs.step(out.float(), timestep, x).prev_sample
    mine = _run_ours(ours, _velocity_network, x_T.double())
    assert len(ours.timesteps) == len(theirs.timesteps) == (2 * n - 1 if method == "heun" else n)
    torch.testing.assert_close(mine.float(), x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_dpmpp_2m_matches_diffusers_dpm_solver_with_flow_sigmas(shift):
    """DPM-Solver++(2M) on diffusers' flow grid (``use_flow_sigmas``: from 1 - 1/T, shifted),
    the network told each step's sigma: the end agrees with diffusers' to float32 rounding."""
    diffusers = pytest.importorskip("diffusers")
    process = FlowProcess()
    n = 8
    theirs = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
        solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero")
    theirs.set_timesteps(n)
    ours = VelocityScheduler(process, method="dpmpp_2m")  # their grid, already shifted
    ours.set_timesteps(n, times=theirs.sigmas[:n].double())
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    x = x_T.clone()
    for i, timestep in enumerate(theirs.timesteps):
        t = theirs.sigmas[i].double()
        seen = x.double() * process.c_in(t)
        out = _velocity_network(seen, process.model_time(t).float().double().reshape(1))
        x = theirs.step(out.float(), timestep, x).prev_sample
    mine = _run_ours(ours, _velocity_network, x_T.double())
    assert len(ours.timesteps) == len(theirs.timesteps) == n
    torch.testing.assert_close(mine.float(), x, rtol=1e-4, atol=1e-5)


def _exact_gaussian_velocity(process, c):
    """The exact velocity of N(0, c^2) pixels under a flow ``process``, as a network of
    (c_in x_t, model time): the flow maps x_1 to c x_1."""
    def exact(x_in, model_time):
        t = process.time_of_model_time(model_time.double().flatten()[:1]).reshape(())
        x = x_in / process.c_in(t)
        eps = t * x / ((1 - t) ** 2 * c**2 + t**2)
        return eps - ((x - t * eps) / (1 - t) if float(t) < 1 else torch.zeros_like(x))
    return exact


def test_trailing_spacing_takes_n_equal_steps_to_zero():
    """diffusers' grid ends its n times at 1 / T, so with 2 steps the second runs from 1e-3 to
    0 and does nothing; trailing's are 1, 1/2, then 0. On N(0, c^2) data one Euler step from
    x_1 lands on E[x_0 | x_1] = 0 (the scale's error 1.0): two of diffusers' steps stay there,
    two trailing ones reach 0.6 (exactly: x_1 -> x_1 / 2 -> x_1 / 5, against c x_1 = x_1 / 2)."""
    process, c = FlowProcess(), 0.5
    sched = VelocityScheduler(process, spacing="trailing")
    sched.set_timesteps(2)
    torch.testing.assert_close(sched.times, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    diffusers_grid = VelocityScheduler(process)
    diffusers_grid.set_timesteps(2)
    torch.testing.assert_close(diffusers_grid.times, torch.tensor([1.0, 1e-3, 0.0], dtype=F64))

    exact = _exact_gaussian_velocity(process, c)

    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = [abs(float((_run_ours(g, exact, x_T.clone()) / (c * x_T)).median()) - 1)
              for g in (sched, diffusers_grid)]
    assert errors[0] == pytest.approx(0.6) and errors[1] > 0.99, errors


def test_logsnr_spacing_is_even_in_lambda_and_helps_dpmpp_2m():
    """spacing=logsnr: the times after t = 1 are evenly spaced in log(alpha / sigma), from
    t = 1 - 1/T to 1/T; on N(0, c^2) data 2M's error at 10 steps falls tenfold on it (measured
    0.36 -> 0.038), below Euler's on its own grid (0.15)."""
    process, c = FlowProcess(), 0.5
    sched = VelocityScheduler(process, method="dpmpp_2m", spacing="logsnr")
    sched.set_timesteps(5)
    lam = process.log_snr(sched.times[1:-1])
    assert float(sched.times[0]) == 1.0 and float(sched.times[-1]) == 0.0
    torch.testing.assert_close(lam.diff(), torch.full((3,), math.log(999) / 2, dtype=F64))

    exact = _exact_gaussian_velocity(process, c)

    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = {}
    for method, spacing in (("dpmpp_2m", "linear"), ("dpmpp_2m", "logsnr"), ("euler", "linear")):
        sched = VelocityScheduler(process, method=method, spacing=spacing)
        sched.set_timesteps(10)
        x = _run_ours(sched, exact, x_T.clone())
        errors[method, spacing] = abs(float((x / (c * x_T)).median()) - 1)
    assert errors["dpmpp_2m", "logsnr"] < errors["dpmpp_2m", "linear"] / 5, errors
    assert errors["dpmpp_2m", "logsnr"] < errors["euler", "linear"] / 2, errors


def test_each_method_converges_at_its_order_on_gaussian_data():
    """Data N(0, c^2 I): the exact velocity is linear in x and the flow maps x_1 to c x_1.
    From 20 to 40 steps Euler's error halves (measured 2.0x) and Heun's quarters (3.9x); the
    midpoint's falls at least as fast (8.6x: its first-order error terms cancel on this linear
    velocity); DPM-Solver++(2M)'s too (4.6x, on diffusers' grid)."""
    process, c = FlowProcess(), 0.5
    exact = _exact_gaussian_velocity(process, c)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for method, ratio in (("euler", 2), ("heun", 4), ("midpoint", 4), ("dpmpp_2m", 4)):
        errors = []
        for steps in (20, 40):
            sched = VelocityScheduler(process, method=method)
            sched.set_timesteps(steps)
            x = _run_ours(sched, exact, x_T.clone())
            errors.append(abs(float((x / (c * x_T)).median()) - 1))
        if method in ("midpoint", "dpmpp_2m"):
            assert errors[0] / errors[1] > 0.8 * ratio, (method, errors)
        else:
            assert errors[0] / errors[1] == pytest.approx(ratio, rel=0.2), (method, errors)


def test_other_samplers_refuse_a_flow_process_in_one_sentence():
    from diffusion.schedulers import KarrasScheduler, ScoreSDEScheduler

    for cls in (KarrasScheduler, ScoreSDEScheduler):
        with pytest.raises(ValueError, match=r"infinite at t = 1 for FlowProcess \(alpha\(1\) = "
                                             r"0\): sample it with sampler=flow_dpmpp_2m, "
                                             r"flow_euler, flow_heun, flow_midpoint\.$"):
            cls.over(FlowProcess())
    # the velocity samplers run every process: the probability-flow ODE in its own time
    sched = VelocityScheduler.over(VPProcess(), method="heun")
    sched.set_timesteps(4)
    assert len(sched.timesteps) == 7 and math.isclose(float(sched.times[0]), 1.0)


def test_a_flow_run_trains_and_samples_with_each_velocity_sampler_and_guidance(
        tmp_path, tiny_mnist_root):
    from omegaconf import OmegaConf

    from diffusion.commands.sample import sample
    from hydra_utils import compose_config
    from test_train import run_training

    run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                "model.base_channels=8", "scheduler=flow", "objective=flow",
                                "objective.t_sampling=logit_normal", "sampler=flow_euler",
                                "sampler.steps=3", "conditioning=class")
    # an untrained network's velocity MSE is about E|eps - x_0|^2 = 1 + E[x_0^2] (~1.9 here)
    assert summary["step"] == 4 and 1.0 < summary["train/loss"] < 3.0
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.scheduler._target_ == "diffusion.processes.FlowProcess"
    assert saved.scheduler.prediction_type == "flow_prediction"
    assert (saved.objective.weighting, saved.objective.t_sampling) == ("none", "logit_normal")
    drawn = {}
    for name, scale in (("flow_euler", 1.0), ("flow_heun", 1.0), ("flow_midpoint", 1.0),
                        ("flow_euler", 3.0)):
        cfg = compose_config([f"run={run}", f"sampler={name}", "sampler.steps=3", "n=2",
                              f"guidance_scale={scale}", "labels=[0,1]", "device=cpu",
                              "save_tensors=true",
                              f"out={tmp_path / f'{name}-{scale}.png'}"], config_name="sample")
        images = torch.load(sample(cfg)["tensors"], weights_only=True)
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all(), name
        drawn[name, scale] = images
    # classifier-free guidance combines the velocities: it changes the draw from the same noise
    assert not torch.equal(drawn["flow_euler", 3.0], drawn["flow_euler", 1.0])


class ExactGaussian(torch.nn.Module):
    """The exact network of N(0, c^2) pixels under any ``process``: its training target at the
    posterior means x0_hat = alpha c^2 x / var and eps_hat = sigma x / var."""

    num_classes = None

    def __init__(self, process, c):
        super().__init__()
        self.process, self.c = process, c

    def forward(self, x_in, model_time, y=None):
        process = self.process
        t = process.time_of_model_time(model_time.double().flatten()[:1]).reshape(())
        x = x_in.double() / process.c_in(t)
        alpha, sigma = process.alpha(t), process.sigma(t)
        x0 = self.x0_mean(x, alpha, sigma)
        return process.training_target(x0, (x - alpha * x0) / sigma, t).float()

    def x0_mean(self, x, alpha, sigma):
        """E[x_0 | x_t = x]: alpha c^2 x / (alpha^2 c^2 + sigma^2) for independent pixels."""
        return alpha * self.c**2 * x / (alpha**2 * self.c**2 + sigma**2)


def test_a_flow_model_inverts_along_its_ode_and_regenerates():
    """The exact velocity of N(0, c^2) pixels as a pipeline's network: inversion runs
    flow_euler's steps backwards to x_1 (the linear map x_0 / c, up to Euler's error), and
    regenerate brings the images back (measured: within 0.019), and four fixed-point
    iterations a step make the round trip exact to float32 (2.4e-7)."""
    from diffusion.sampling.pipeline import DiffusionPipeline

    process, c = FlowProcess(), 0.5
    pipe = DiffusionPipeline(ExactGaussian(process, c), process, (1, 4, 4), device="cpu")
    assert pipe.sampler.name == "flow_euler"
    images = (torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * c).clamp(-1, 1)
    plain = pipe.invert(images, steps=50)
    assert float((plain.latents / (images / c)).median()) == pytest.approx(1.0, abs=0.05)
    back = pipe.regenerate(plain.latents, steps=50).images
    refined = pipe.regenerate(pipe.invert(images, steps=50, fixed_point=4).latents,
                              steps=50).images
    plain_error = float((back - images).abs().max())
    refined_error = float((refined - images).abs().max())
    assert refined_error < 1e-3 and refined_error < plain_error / 5, (plain_error,
                                                                      refined_error)


def test_straightness_is_zero_for_straight_paths_and_the_integral_otherwise():
    """Liu et al.'s straightness along the exact flow: data at one point m has straight paths
    (x_t = (1 - t) m + t x_1), so S = 0; for N(0, c^2) data the paths are x_1 g(t) with
    g = sqrt((1 - t)^2 c^2 + t^2), and S = integral of (1 - c - g'(t))^2 dt (E x_1^2 = 1)."""
    from diffusion.metrics.straightness import straightness

    process = FlowProcess()
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    m = torch.tensor([0.3, -0.2], dtype=F64)
    dirac = straightness(lambda x, t: (x - m) / t, process, noise, steps=50)
    assert dirac.value < 1e-20 and dirac.n == 4000

    c = 0.5

    def gaussian(x, t):
        eps = t * x / ((1 - t) ** 2 * c**2 + t**2)
        x0 = (x - t * eps) / (1 - t) if t < 1 else torch.zeros_like(x)
        return eps - x0

    t = torch.linspace(0, 1, 200_001, dtype=F64)
    g_prime = ((t - (1 - t) * c**2) / ((1 - t) ** 2 * c**2 + t**2).sqrt())
    exact = float(torch.trapezoid((1 - c - g_prime) ** 2, t))
    measured = straightness(gaussian, process, noise, steps=400)
    assert measured.value == pytest.approx(exact, rel=0.05), (measured.value, exact)
    # the same through a pipeline's network (float32): pipeline_velocity reads its output
    from diffusion.metrics.straightness import pipeline_velocity
    from diffusion.sampling.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline(ExactGaussian(process, c), process, (2, 1, 1), device="cpu")
    through = straightness(pipeline_velocity(pipe), process,
                           noise[:1000].reshape(1000, 2, 1, 1), steps=400)
    assert through.value == pytest.approx(exact, rel=0.08), (through.value, exact)


class ExactConstantImages(ExactGaussian):
    """The exact network of images whose pixels all equal one z ~ N(0, c^2): given x_t, the
    posterior mean of z is alpha c^2 sum(x) / (alpha^2 c^2 D + sigma^2) (D pixels)."""

    def x0_mean(self, x, alpha, sigma):
        c, d = self.c, x[0].numel()
        z = alpha * c**2 * x.flatten(1).sum(1) / (alpha**2 * c**2 * d + sigma**2)
        return z.reshape(-1, *([1] * (x.ndim - 1))).expand_as(x)


@pytest.mark.parametrize("name, sampler, steps", [
    ("flow", "flow_euler", 50), ("vp", "pc", 100), ("edm", "edm", 18), ("ve", "ald", 10)])
def test_a_continuous_run_inpaints_by_replacing_the_known_pixels(name, sampler, steps):
    """Independent N(0, c^2) pixels: the filled-in half is drawn from its marginal (std c),
    the kept half is the original exactly, whatever the process and its sampler."""
    from diffusion.processes import PROCESSES
    from diffusion.sampling.pipeline import DiffusionPipeline
    from diffusion.sampling.sampler import SamplerSpec

    process, c = PROCESSES[name](), 0.5
    pipe = DiffusionPipeline(ExactGaussian(process, c), process, (1, 8, 8), device="cpu",
                             sampler=SamplerSpec(sampler, steps, None, {"steps_per_level": 100}
                                                 if sampler == "ald" else {}))
    images = (torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * c
              ).clamp(-1, 1)
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0
    out = pipe.inpaint(images, mask, seed=1).images
    torch.testing.assert_close(out[..., :4], images[..., :4])
    filled = out[..., 4:]
    assert float(filled.std()) == pytest.approx(c, rel=0.1), float(filled.std())
    assert not torch.allclose(filled, images[..., 4:], atol=0.1)
    # images of one grey each: the filled half must take the kept half's grey, which only the
    # replacement of the known pixels at every state can tell the sampler
    constant = DiffusionPipeline(ExactConstantImages(process, c), process, (1, 8, 8),
                                 device="cpu", sampler=pipe.sampler)
    greys = torch.linspace(-0.8, 0.8, 16).reshape(16, 1, 1, 1).expand(16, 1, 8, 8)
    filled = constant.inpaint(greys, mask, seed=1).images[..., 4:]
    error = float((filled - greys[..., 4:]).abs().mean())
    free = float((constant(16, seed=1).images - greys).abs().mean())  # without the known half
    assert error < 0.1 * free, (error, free)


def test_reflow_pairs_are_sharded_deterministic_and_resume(tmp_path):
    """Pairs in shards: each shard's noise from its own stream, its images the ODE's image of
    that noise; a second call keeps what is there, a lost shard comes back the same, and
    other settings or a stochastic sampler are refused in one sentence."""
    from diffusion.errors import ConfigError
    from diffusion.sampling.pipeline import DiffusionPipeline
    from diffusion.sampling.sampler import SamplerSpec
    from diffusion.training.reflow import load_pairs, make_pairs

    process = FlowProcess()
    pipe = DiffusionPipeline(ExactGaussian(process, 0.5), process, (1, 4, 4), device="cpu")
    spec = SamplerSpec("flow_euler", 8, None)
    shards = make_pairs(pipe, 10, tmp_path / "pairs", spec=spec, shard_size=4, seed=3)
    assert [s.size for s in shards] == [4, 4, 2]
    noise, images = load_pairs(shards)
    assert noise.shape == images.shape == (10, 1, 4, 4)
    torch.testing.assert_close(images, pipe(10, sampler=spec, noise=noise).images)
    stamps = [s.path.stat().st_mtime_ns for s in shards]
    shards[1].path.unlink()
    again = make_pairs(pipe, 10, tmp_path / "pairs", spec=spec, shard_size=4, seed=3)
    assert [s.path.stat().st_mtime_ns for s in again][::2] == stamps[::2]
    torch.testing.assert_close(load_pairs(again)[0], noise)
    torch.testing.assert_close(load_pairs(again)[1], images)
    with pytest.raises(ConfigError, match="holds pairs drawn with other settings"):
        make_pairs(pipe, 10, tmp_path / "pairs", spec=spec, shard_size=4, seed=4)
    with pytest.raises(ConfigError, match="draws noise at its steps"):
        make_pairs(pipe, 10, tmp_path / "other", spec=SamplerSpec("edm_euler_a", 8, None),
                   shard_size=4)
