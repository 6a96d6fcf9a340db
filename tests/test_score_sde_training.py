"""Training a continuous-time process (``scheduler=vp|vp_cosine|subvp|ve``) with denoising
score matching (``objective=dsm``) and sampling it with the continuous-time samplers
(``sampler=pc|em|ode|rk45|ald``), from the command line's config and from Python: what the
network sees, the weights, the recorded sigma_max, and the sentences that refuse a mismatched
objective or sampler."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import MNIST

from diffusion.commands.sample import sample
from diffusion.config.build import build_objective, build_scheduler
from diffusion.errors import ConfigError
from diffusion.processes import DiscreteProcess, VEProcess, VPProcess, sigma_max_from_data
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers import CONTINUOUS_SAMPLERS, DDPMScheduler, ScoreSDEScheduler
from diffusion.training.objectives import Objective
from diffusion.training.score_matching import ScoreMatching
from hydra_utils import compose_config
from test_train import SMALL_MODELS, run_training

*_NAMES, _LAST = sorted(CONTINUOUS_SAMPLERS)
CONTINUOUS_LIST = f"{', '.join(_NAMES)} or {_LAST}"


@pytest.fixture(scope="module")
def ve_run(tmp_path_factory, tiny_mnist_root):
    """A 4-step VE run trained by score matching, its grids drawn by PC sampling."""
    tmp = tmp_path_factory.mktemp("ve")
    run, summary = run_training(tmp, tiny_mnist_root, "model=basic", "model.base_channels=8",
                                "scheduler=ve", "objective=dsm", "sampler=pc",
                                "sampler.steps=3")
    return run, summary


def test_ve_run_trains_records_sigma_max_from_the_data_and_draws_its_grid(
        ve_run, tiny_mnist_root):
    run, summary = ve_run
    assert summary["step"] == 4 and math.isfinite(summary["train/loss"])
    # an untrained network's epsilon error is about E[eps^2] = 1
    assert 0.75 < summary["train/loss"] < 1.5
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.scheduler._target_ == "diffusion.processes.VEProcess"
    assert saved.objective._target_ == "diffusion.training.score_matching.ScoreMatching"
    # sigma_max: null became the largest distance between two of the (64) training images,
    # measured here independently from the raw files, scaled to [-1, 1] as the data group does
    images = MNIST(str(tiny_mnist_root), train=True).data
    expected = sigma_max_from_data(images.float() / 127.5 - 1)
    assert saved.scheduler.sigma_max == pytest.approx(expected, abs=1e-4)
    assert (run / "samples" / "step_00000004.png").is_file()


@pytest.mark.parametrize("sampler", ["pc", "em", "ode", "ald", "rk45"])
def test_ve_run_samples_from_the_command_line_with_each_continuous_sampler(ve_run, sampler):
    run, _ = ve_run
    steps = (["sampler.rtol=1e-2", "sampler.atol=1e-2"] if sampler == "rk45"
             else ["sampler.steps=3"])
    cfg = compose_config([f"run={run}", f"sampler={sampler}", *steps, "n=2",
                          "device=cpu", "save_tensors=true"], config_name="sample")
    images = torch.load(sample(cfg)["tensors"], weights_only=True)
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()


def test_a_continuous_run_refuses_a_discrete_sampler_before_loading(ve_run):
    run, _ = ve_run
    cfg = compose_config([f"run={run}", "sampler=ddim", "n=2", "device=cpu"],
                         config_name="sample")
    with pytest.raises(ValueError, match=r"^DDIMScheduler walks a discrete DDPM noise process; "
                                         r"this run's is VEProcess \(continuous time\): sample "
                                         rf"it with sampler={CONTINUOUS_LIST}.$"):
        sample(cfg)


def test_the_pipeline_of_a_continuous_run_defaults_to_its_grid_sampler_and_the_ode(ve_run):
    run, _ = ve_run
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    assert pipe.sampler.name == "pc" and isinstance(pipe.scheduler, VEProcess)
    plain = DiffusionPipeline(pipe.model, pipe.scheduler, (1, 28, 28), device="cpu")
    assert plain.sampler == SamplerSpec("ode", 50, None)
    out = plain(2, steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 28, 28)


def test_ddpm_objectives_refuse_a_continuous_process():
    cfg = compose_config(["scheduler=ve", "scheduler.sigma_max=30"])
    with pytest.raises(ConfigError, match=r"^this objective trains a DDPM noise process; the "
                                          r"run's is VEProcess, in continuous time: use "
                                          r"objective=dsm.$"):
        build_objective(cfg, build_scheduler(cfg))


@pytest.mark.parametrize("process", ["vp", "vp_cosine", "subvp", "ve"])
def test_each_process_option_builds_with_its_objective(process):
    cfg = compose_config([f"scheduler={process}", "objective=dsm", "scheduler.sigma_max=30"
                          if process == "ve" else "scheduler.t_min=0.001"])
    objective = build_objective(cfg, build_scheduler(cfg))
    assert isinstance(objective, ScoreMatching)
    assert type(objective.process).name == process


def test_network_sees_the_normalised_mixture_at_its_time():
    """x_in = c_in x_t = a x_0 + s eps with a^2 + s^2 = 1, told (model_steps - 1) t."""
    process = VEProcess(sigma_min=0.01, sigma_max=40.0)
    objective = ScoreMatching(process)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_in, t_in, target = objective.noised(x0, noise, t)
    sigma = 0.01 * 4000.0 ** t
    a, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
    expected = a.view(-1, 1, 1, 1).float() * x0 + s.view(-1, 1, 1, 1).float() * noise
    torch.testing.assert_close(x_in, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t_in, 999 * t)
    assert torch.equal(target, noise)


def test_dsm_on_a_ddpm_table_at_its_steps_is_the_ddpm_objective():
    """On a DDPM scheduler, score matching at t = k / (T - 1) gives DDPM's own training
    input, time and target (the table read in continuous time)."""
    scheduler = DDPMScheduler(beta_schedule="cosine", prediction_type="v_prediction")
    dsm, ddpm = ScoreMatching(scheduler), Objective(scheduler)
    assert isinstance(dsm.process, DiscreteProcess)
    k = torch.tensor([0, 250, 999])
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    x_in, t_in, target = dsm.noised(x0, noise, k.double() / 999)
    expected = ddpm.noised(x0, noise, k)
    torch.testing.assert_close(x_in, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t_in, k.double())
    torch.testing.assert_close(target, expected[2], atol=1e-5, rtol=1e-5)


def test_weights_carry_lambda_to_each_output_exactly():
    """sigma2: the epsilon error unweighted, SNR on x_0 and SNR / (SNR + 1) on v (normalised
    SNR a^2 / s^2); likelihood: g^2 / sigma^2 on the epsilon error (2 log(sigma_max /
    sigma_min) for VE at every t; beta / sigma^2 for VP)."""
    t = torch.tensor([0.01, 0.3, 0.8], dtype=torch.float64)
    ve = VEProcess(sigma_min=0.01, sigma_max=40.0)
    torch.testing.assert_close(ScoreMatching(ve).weights(t), torch.ones(3))
    sigma = 0.01 * 4000.0 ** t
    for prediction, ratio in (("sample", 1 / sigma**2), ("v_prediction", 1 / (1 + sigma**2))):
        process = VEProcess(sigma_min=0.01, sigma_max=40.0, prediction_type=prediction)
        torch.testing.assert_close(ScoreMatching(process).weights(t), ratio.float())
    torch.testing.assert_close(ScoreMatching(ve, weighting="likelihood").weights(t),
                               torch.full((3,), 2 * math.log(4000.0)))
    vp = VPProcess()
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(ScoreMatching(vp, weighting="likelihood").weights(t),
                               (beta / vp.sigma(t) ** 2).float())


def test_times_are_drawn_in_t_min_to_one_and_stratified_covers_each_slice():
    objective = ScoreMatching(VPProcess(t_min=0.01), t_sampling="stratified")
    t = objective.sample_timesteps(8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and bool(((t >= 0.01) & (t < 1)).all())
    slots = ((t - 0.01) / 0.99 * 8).floor().long()
    assert sorted(slots.tolist()) == list(range(8))


def test_ve_without_sigma_max_says_how_to_set_it():
    with pytest.raises(ValueError, match=r"^sigma_max is not set yet: give a number, or train "
                                         r"with sigma_max=null to measure it from the training "
                                         r"images.$"):
        VEProcess(sigma_max=None).sigma(0.5)


def test_vp_run_trains_with_the_likelihood_weighting_and_samples_with_the_ode(
        tmp_path, tiny_mnist_root):
    run, summary = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                "model.base_channels=8", "scheduler=vp",
                                "objective=dsm_likelihood", "sampler=ode", "sampler.steps=3",
                                "trainer.val_every=0")
    assert summary["step"] == 4 and math.isfinite(summary["train/loss"])
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    assert isinstance(pipe.scheduler, VPProcess)
    sampler = pipe.sampler.build(pipe.scheduler)
    assert isinstance(sampler, ScoreSDEScheduler) and sampler.probability_flow
    first = pipe(2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    again = pipe(2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert torch.equal(first, again)  # the ODE is deterministic given x_T


def test_levels_draw_ncsn_noise_levels_and_the_recipe_anneals_through_them():
    process = VEProcess(sigma_min=0.01, sigma_max=10.0)
    objective = ScoreMatching(process, levels=10)
    t = objective.sample_timesteps(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    levels = torch.tensor([1e-5 + (1 - 1e-5) * k / 9 for k in range(10)], dtype=torch.float64)
    assert torch.isclose(t[:, None], levels[None]).any(1).all()
    counts = torch.isclose(t[:, None], levels[None]).sum(0)
    assert int(counts.min()) > 300  # each level about 400 times
    sigmas = process.sigma(levels)
    torch.testing.assert_close(sigmas[1:] / sigmas[:-1], torch.full(
        (9,), 1000 ** ((1 - 1e-5) / 9), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^objective.levels must be an integer >= 2"):
        ScoreMatching(process, levels=1)
    cfg = compose_config(["experiment=ncsn_mnist"])
    assert (cfg.objective.levels, cfg.sampler.name, cfg.sampler.steps) == (10, "ald", 10)
    sampler = SamplerSpec.from_config(cfg.sampler).build(
        VEProcess(sigma_min=0.01, sigma_max=10.0))
    sampler.set_timesteps(10)
    visited = sorted(set(sampler.timesteps.tolist()))
    torch.testing.assert_close(torch.tensor(visited, dtype=torch.float64),
                               (999 * levels).float().double(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("model", ["basic", "unet", "unet_attn"])
def test_backbones_take_a_float_time_equal_to_the_integer_one(model):
    """The time embedding reads t as a float: 500.0 is 500 (DDPM runs unchanged), and a
    fractional time gives an output between its neighbours' (continuous in t)."""
    from diffusion.config.build import build_model
    cfg = compose_config([f"model={model}", *SMALL_MODELS[model]])
    net = build_model(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # the output layer starts at zero: give every weight a value
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.05)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        at_int = net(x, torch.tensor([500, 500]))
        at_float = net(x, torch.tensor([500.0, 500.0], dtype=torch.float64))
        nearby = net(x, torch.tensor([500.001, 500.001]))
    assert torch.equal(at_int, at_float)
    assert 0 < (nearby - at_int).abs().max() < 1e-3


@pytest.mark.parametrize("task", ["inpaint", "invert"])
def test_ve_run_inpaints_and_inverts_from_the_command_line(ve_run, task, tiny_mnist_root):
    """A continuous run edits with its own samplers: inpainting by replacing the known pixels
    (Song et al. 2021) with pc, inversion along the probability-flow ODE with flow_euler; a
    discrete sampler, or img2img, is refused in one sentence."""
    from diffusion.commands.edit import edit

    run, _ = ve_run
    sampler = ["sampler=pc", "sampler.steps=3"] if task == "inpaint" else [
        "sampler=flow_euler", "sampler.steps=3"]
    samples = ["samples=1"] if task == "inpaint" else []
    cfg = compose_config([f"run={run}", f"task={task}", "n=2", *samples, "device=cpu",
                          f"data_root={tiny_mnist_root}", "save_tensors=true", *sampler],
                         config_name="edit")
    written = edit(cfg)
    saved = torch.load(written["tensors"], weights_only=True)
    results = saved["results"] if "results" in saved else saved["x_T"]
    assert torch.isfinite(results).all()


def test_ve_run_refuses_edits_it_cannot_run(ve_run, tiny_mnist_root):
    from diffusion.commands.edit import edit

    run, _ = ve_run
    for task, sampler, message in (
            ("inpaint", "ald", None),
            ("inpaint", "rk45", "inpaint of a continuous-time run replaces the known pixels"),
            ("invert", "pc", "invert of a continuous-time run follows its ODE in velocity form"),
            ("img2img", "pc", "img2img starts a discrete sampler part-way")):
        cfg = compose_config([f"run={run}", f"task={task}", "n=2", "device=cpu",
                              f"data_root={tiny_mnist_root}", f"sampler={sampler}",
                              "sampler.steps=3"], config_name="edit")
        if message is None:
            edit(cfg)
            continue
        with pytest.raises(ValueError, match=message):
            edit(cfg)
