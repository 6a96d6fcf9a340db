"""EDM (Karras et al. 2022) on the process abstraction: the process against EDM's closed forms
and preconditioning, the loss against EDM's, and the samplers step for step against
k-diffusion's ``sample_euler``, ``sample_heun``, ``sample_euler_ancestral`` and
``sample_dpmpp_2m`` and diffusers' ``EDMEulerScheduler``, from the same network and noise."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.processes import EDMProcess, VEProcess, VPProcess
from diffusion.schedulers.karras import KarrasScheduler, ancestral_levels, karras_sigmas
from diffusion.training.score_matching import ScoreMatching

SHAPE = (3, 2, 4, 4)
F64 = torch.float64


def edm_coefficients(sigma: float, sigma_data: float = 0.5):
    """EDM's table 1: c_skip, c_out, c_in."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / math.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def test_evenly_spaced_times_are_edms_schedule_and_the_maps_invert():
    process = EDMProcess()
    n = 18
    t = torch.linspace(1, 0, n, dtype=F64)
    expected = karras_sigmas(n, 0.002, 80.0, 7.0)
    torch.testing.assert_close(process.sigma(t), expected)
    # EDM's eq. 5 written out
    i = torch.arange(n, dtype=F64)
    eq5 = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(expected, eq5)
    torch.testing.assert_close(process.time_of(expected), t)
    torch.testing.assert_close(process.time_of_model_time(process.model_time(t)), t)
    assert float(process.model_time(0.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(process.model_time(1.0)) == pytest.approx(999.0)
    # the network's time is EDM's c_noise = ln(sigma) / 4 up to an affine map
    c_noise = torch.log(expected) / 4
    slope = (process.model_time(t)[1:] - process.model_time(t)[:-1]) / (c_noise[1:] - c_noise[:-1])
    torch.testing.assert_close(slope, torch.full_like(slope, float(slope[0])))
    # the generic bisection gives the closed form's time
    generic = super(EDMProcess, process).time_of(expected)
    torch.testing.assert_close(generic, t, atol=1e-12, rtol=0)


def test_v_prediction_with_sigma_data_is_edms_preconditioning():
    """D = c_skip x + c_out F(c_in x) with F = -v, and the v target is -F's target."""
    process = EDMProcess()
    g = torch.Generator().manual_seed(0)
    x0, eps, f = (torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(3))
    for t in (0.05, 0.5, 0.97):
        sigma = float(process.sigma(t))
        c_skip, c_out, c_in = edm_coefficients(sigma)
        assert float(process.c_in(t)) == pytest.approx(c_in)
        x = x0 + sigma * eps
        denoised, _ = process.pred_x0_eps(-f, x, t)
        torch.testing.assert_close(denoised, c_skip * x + c_out * f)
        f_target = (x0 - c_skip * x) / c_out
        torch.testing.assert_close(process.training_target(x0, eps, t), -f_target)


def test_the_edm_loss_is_edms_weighted_denoiser_error():
    """lambda(sigma) |D - x_0|^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    equals the weight on the network's own v error times that error, for v, epsilon and x_0
    outputs alike."""
    g = torch.Generator().manual_seed(1)
    x0, eps, out = (torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(3))
    t = torch.tensor([0.1, 0.6, 0.9], dtype=F64)
    for prediction_type in ("v_prediction", "epsilon", "sample"):
        process = EDMProcess(prediction_type=prediction_type)
        objective = ScoreMatching(process, weighting="edm", t_sampling="lognormal")
        x = process.add_noise(x0, eps, t)
        denoised, _ = process.pred_x0_eps(out, x, t)
        sigma = process.sigma(t)
        lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        edm = lam * (denoised - x0).pow(2).flatten(1).mean(1)
        ours = objective.weights(t).double() * (
            out - process.training_target(x0, eps, t)).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(ours, edm, rtol=1e-6, atol=0)
        if prediction_type == "v_prediction":
            torch.testing.assert_close(objective.weights(t), torch.ones(3))


def test_lognormal_times_draw_edms_noise_levels():
    process = EDMProcess()
    objective = ScoreMatching(process, weighting="edm", t_sampling="lognormal")
    t = objective.sample_timesteps(20_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    log_sigma = torch.log(process.sigma(t))
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.03)
    # a process without EDM's closed form clamps the draws to its own [t_min, 1]
    vp = ScoreMatching(VPProcess(), t_sampling="lognormal")
    t = vp.sample_timesteps(1000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    with pytest.raises(ValueError, match="t_sampling=lognormal"):
        ScoreMatching(process, t_sampling="lognormal", levels=10)


def _network(process):
    """A fixed smooth 'network' of its input and time (v-prediction), and the denoiser
    D(x, sigma) it implies through ``process``: what k-diffusion's samplers take."""
    def net(x_in, model_time):
        tt = (model_time.double() / 999).reshape(-1, *([1] * (x_in.ndim - 1)))
        return torch.tanh(x_in.double() * (0.7 + 0.2 * tt)) * (0.5 + tt) - 0.1 * tt

    def denoiser(x, sigma):  # the network is told a float32 time, as the pipeline tells it
        t = process.time_of(sigma.double().flatten()[:1]).reshape(())
        model_time = process.model_time(t).float().double()
        return process.pred_x0_eps(net(x * process.c_in(t), model_time), x, t)[0]
    return net, denoiser


def _run_ours(sched, net, x, generator=None):
    for model_time in sched.timesteps:
        out = net(sched.scale_model_input(x, model_time), model_time.reshape(1).double())
        x = sched.step(out, model_time, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("algorithm, function, options", [
    ("euler", "sample_euler", {}),
    ("heun", "sample_heun", {}),
    ("heun", "sample_heun", {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0}),
    ("euler", "sample_euler", {"s_churn": 10.0, "s_tmin": 0.0, "s_tmax": 10.0,
                               "s_noise": 1.007}),
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 1.0}),
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.5}),
    ("dpmpp_2m", "sample_dpmpp_2m", {}),
], ids=["euler", "heun", "heun-churn", "euler-churn", "euler_a", "euler_a-eta0.5", "dpmpp_2m"])
def test_each_sampler_matches_k_diffusion_step_for_step(algorithm, function, options):
    """The same network, sigmas (EDM's, n = 12) and noise: every state of the chain agrees with
    k-diffusion's to float64 rounding. k-diffusion draws its noise with torch.randn_like (the
    churn's at every step, used where gamma > 0); the test hands it the draws our generator
    makes, in order, where ours uses one."""
    k_sampling = pytest.importorskip("k_diffusion.sampling")
    process = EDMProcess()
    net, denoiser = _network(process)
    sched = KarrasScheduler(process, algorithm=algorithm, **options)
    sched.set_timesteps(12)
    torch.testing.assert_close(sched.sigmas, k_sampling.get_sigmas_karras(
        12, 0.002, 80.0, 7.0).double(), rtol=1e-6, atol=0)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=F64)
    ours = _run_ours(sched, net, x_T * sched.init_noise_sigma,
                     torch.Generator().manual_seed(3))

    stream = torch.Generator().manual_seed(3)
    churned = [h != s for h, s in zip(sched._hats, sched.sigmas.tolist(), strict=False)]
    keys = dict(options)
    if function in ("sample_euler", "sample_heun"):
        # draws: one per step; ours draws only where the step churns, step 0's folded into x_T
        draws = [torch.randn(SHAPE, generator=stream, dtype=F64) if c and i > 0
                 else torch.zeros(SHAPE, dtype=F64) for i, c in enumerate(churned)]
        assert not churned[0]  # s_tmax below sigma_max: the start is the same x_T
    else:
        draws = [torch.randn(SHAPE, generator=stream, dtype=F64) for _ in churned]
        if "eta" in options:
            ancestral = iter(draws)
            keys["noise_sampler"] = lambda s, s_next: next(ancestral)
    if function in ("sample_euler", "sample_heun"):
        sequence = iter(draws)
        original = k_sampling.torch.randn_like
        k_sampling.torch.randn_like = lambda like: next(sequence)
    states = []
    try:
        theirs = getattr(k_sampling, function)(
            lambda x, sigma: denoiser(x, sigma), x_T * 80.0, sched.sigmas, disable=True,
            callback=lambda info: states.append(info["x"]), **keys)
    finally:
        if function in ("sample_euler", "sample_heun"):
            k_sampling.torch.randn_like = original
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert len(states) == 12


def test_euler_matches_diffusers_edm_euler_scheduler():
    diffusers = pytest.importorskip("diffusers")
    process = EDMProcess()
    net, _ = _network(process)
    theirs_sched = diffusers.EDMEulerScheduler(prediction_type="v_prediction")
    theirs_sched.set_timesteps(10)
    ours_sched = KarrasScheduler(process, algorithm="euler")
    ours_sched.set_timesteps(10)
    torch.testing.assert_close(ours_sched.sigmas.float(), theirs_sched.sigmas, rtol=1e-6, atol=0)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x = x_T * theirs_sched.init_noise_sigma
    for c_noise in theirs_sched.timesteps:  # diffusers tells its network c_noise = ln(sigma) / 4
        model_time = process.model_time(process.time_of(torch.exp(4 * c_noise.double())))
        out = net(theirs_sched.scale_model_input(x, c_noise), model_time.reshape(1)).float()
        x = theirs_sched.step(out, c_noise, x).prev_sample
    ours = _run_ours(ours_sched, net, x_T.double() * ours_sched.init_noise_sigma)
    torch.testing.assert_close(ours.float(), x, rtol=1e-4, atol=1e-4)


def test_edm_sampling_of_gaussian_data_converges_at_each_orders_rate():
    """The exact network of N(0, c^2 I) data under EDM's process (v-prediction, sigma_data =
    0.5). The probability-flow ODE maps x_T to x_T c / sqrt(c^2 + sigma_max^2); the relative
    error of the deterministic samplers falls 4x from 50 to 100 steps for Heun and
    DPM-Solver++(2M) (second order; measured 0.61% and 0.15% for Heun, as k-diffusion's own
    ``sample_heun`` gives) and 2x for Euler (-5.6%, -2.8%). The stochastic ones land near std
    c at 100 steps: Heun with churn within 3%, Euler ancestral (first order) at 0.469."""
    process, c = EDMProcess(), 0.5

    def exact(x_in, model_time):
        t = process.time_of_model_time(model_time.double().flatten()[:1]).reshape(())
        x = x_in / process.c_in(t)
        eps = process.sigma(t) * x / (c**2 + process.sigma(t) ** 2)
        return process.training_target(x - process.sigma(t) * eps, eps, t)

    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact_end = x_T * 80 * c / math.sqrt(c**2 + 80**2)

    def error(algorithm, steps, **options):
        sched = KarrasScheduler(process, algorithm=algorithm, **options)
        sched.set_timesteps(steps)
        assert len(sched.timesteps) == (2 * steps - 1 if algorithm == "heun" else steps)
        x = _run_ours(sched, exact, x_T * sched.init_noise_sigma,
                      torch.Generator().manual_seed(1))
        return x, float((x / exact_end).median()) - 1

    for algorithm, ratio in (("heun", 4), ("dpmpp_2m", 4), ("euler", 2)):
        (_, coarse), (_, fine) = error(algorithm, 50), error(algorithm, 100)
        assert coarse / fine == pytest.approx(ratio, rel=0.15), (algorithm, coarse, fine)
    assert error("heun", 100)[1] == pytest.approx(0.00146, abs=2e-4)
    for algorithm, options, rel in (("heun", {"s_churn": 10.0}, 0.03),
                                    ("euler_ancestral", {}, 0.08)):  # first order: 0.469
        x, _ = error(algorithm, 100, **options)
        assert float(x.std()) == pytest.approx(c, rel=rel), algorithm


def test_karras_sampling_runs_any_process_in_its_noise_levels():
    """Over VP and VE processes the levels run between the process's own ends, and the network
    is told the time of each level."""
    for process in (VPProcess(), VEProcess(sigma_max=20.0)):
        sched = KarrasScheduler(process)
        sched.set_timesteps(5)
        top = float(process.sigma(1.0) / process.alpha(1.0))
        assert float(sched.sigmas[0]) == pytest.approx(top)
        assert float(sched.timesteps[0]) == pytest.approx(999.0, abs=1e-3)
        assert float(sched.sigmas[-1]) == 0.0
    assert ancestral_levels(2.0, 1.0, 0.0) == (1.0, 0.0)
    down, up = ancestral_levels(2.0, 1.0)
    assert down**2 + up**2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="s_churn is EDM's churn"):
        KarrasScheduler(EDMProcess(), algorithm="dpmpp_2m", s_churn=1.0)


def test_an_edm_run_trains_and_samples_with_each_edm_sampler(tmp_path, tiny_mnist_root, caplog):
    """scheduler=edm objective=edm sampler=edm from the command line: the run records EDM's
    process and objective, its loss starts where an untrained network's should (the second
    moment of the F target, a^2 + s^2 E[x_0^2] / sigma_data^2: between 1 and about 3.7 for
    MNIST, mostly -1 background, whose E[x_0^2] is about 0.93), the training images' std is
    logged, and each EDM sampler draws from the run."""
    from omegaconf import OmegaConf

    from diffusion.commands.sample import sample
    from hydra_utils import compose_config
    from test_train import run_training

    with caplog.at_level("INFO"):
        run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                    "model.base_channels=8", "scheduler=edm", "objective=edm",
                                    "sampler=edm", "sampler.steps=3")
    assert summary["step"] == 4 and 1.0 < summary["train/loss"] < 3.7
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.scheduler._target_ == "diffusion.processes.EDMProcess"
    assert saved.scheduler.prediction_type == "v_prediction"
    assert (saved.objective.weighting, saved.objective.t_sampling) == ("edm", "lognormal")
    assert "scheduler.sigma_data = 0.5; the std of the first 64 training images is" in caplog.text
    for name in ("edm", "edm_euler", "edm_euler_a", "edm_dpmpp_2m"):
        cfg = compose_config([f"run={run}", f"sampler={name}", "sampler.steps=3", "n=2",
                              "device=cpu", "save_tensors=true"], config_name="sample")
        images = torch.load(sample(cfg)["tensors"], weights_only=True)
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all(), name
