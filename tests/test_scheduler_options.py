"""The scheduler features diffusers users reach for, against diffusers' own numbers: custom
``timesteps``/``sigmas`` for ``set_timesteps``, dynamic thresholding, ``trained_betas``,
``add_noise`` in each sampler's own variable, ``init_noise_sigma`` as a tensor, a loop that
starts part-way down ``timesteps`` without ``set_begin_index``, and Heun's class defaults."""

from __future__ import annotations

import inspect

import pytest
import torch

from diffusion.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    NoiseScheduler,
)

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 1, 6, 6)


def _model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth, deterministic stand-in for a network (the same for both libraries)."""
    return 0.6 * torch.tanh(x) + 0.02 * float(t) / 1000


def _loop(sched, x, timesteps=None, seed: int | None = None):
    takes = "generator" in inspect.signature(sched.step).parameters  # not diffusers' Heun
    kwargs = {"generator": torch.Generator().manual_seed(seed)} if takes and seed else {}
    for t in sched.timesteps if timesteps is None else timesteps:
        out = _model(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x, **kwargs).prev_sample
    return x


def _start(seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 2e-5) -> None:
    worst = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1.0))
    assert worst < tol, worst


def _pair(name: str, **options):
    ours = getattr(__import__("diffusion.schedulers", fromlist=[name]), name)(**options)
    theirs = getattr(diffusers, name)(**options)
    return ours, theirs


# ------------------------------------------------------------- custom timesteps
@pytest.mark.parametrize("name, options, timesteps", [
    ("DDPMScheduler", {}, [999, 700, 420, 150, 20, 0]),
    ("DPMSolverMultistepScheduler", {}, [999, 800, 600, 400, 200, 50]),
    ("DPMSolverMultistepScheduler", {"solver_order": 1}, [950, 700, 500, 320, 200, 90, 10]),
    ("EulerDiscreteScheduler", {}, [999.0, 750.5, 500.0, 250.25, 10.0]),
    ("HeunDiscreteScheduler", {}, [999.0, 600.0, 300.0, 50.0]),
])
def test_custom_timesteps_sample_as_diffusers(name, options, timesteps):
    ours, theirs = _pair(name, **options)
    ours.set_timesteps(timesteps=timesteps)
    theirs.set_timesteps(timesteps=timesteps)
    assert ours.timesteps.tolist() == pytest.approx(theirs.timesteps.tolist())
    assert ours.num_inference_steps == len(timesteps)  # diffusers' DDPM leaves it None
    x = _start() * float(ours.init_noise_sigma)
    _close(_loop(ours, x, seed=1), _loop(theirs, x, seed=1))


def test_custom_sigmas_sample_as_diffusers():
    sigmas = [80.0, 20.0, 5.0, 1.5, 0.4, 0.05, 0.0]
    ours, theirs = _pair("EulerDiscreteScheduler")
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    assert ours.timesteps.tolist() == pytest.approx(theirs.timesteps.tolist(), abs=1e-3)
    assert ours.sigmas.tolist() == pytest.approx(theirs.sigmas.tolist(), rel=1e-6)
    x = _start() * sigmas[0]
    _close(_loop(ours, x), _loop(theirs, x))


def test_ddim_takes_custom_timesteps_too():
    """diffusers' DDIM has no ``timesteps`` argument; ours does, and its own spacing given
    as a list gives the same run."""
    spaced, custom = DDIMScheduler(), DDIMScheduler()
    spaced.set_timesteps(10)
    custom.set_timesteps(timesteps=spaced.timesteps.tolist())
    x = _start()
    assert torch.equal(_loop(spaced, x), _loop(custom, x))


@pytest.mark.parametrize("call, message", [
    (lambda s: s.set_timesteps(10, timesteps=[999, 0]), r"one of num_inference_steps or "
                                                        r"timesteps; got both\."),
    (lambda s: s.set_timesteps(), r"got neither\."),
    (lambda s: s.set_timesteps(timesteps=[500, 700, 0]), r"strictly descending, each visited "
                                                         r"once; got \[500, 700, 0\]\."),
    (lambda s: s.set_timesteps(timesteps=[500, 500, 0]), "strictly descending"),
    (lambda s: s.set_timesteps(timesteps=[1000, 0]), r"integers in \[0, 999\] \(training "
                                                     r"timesteps\); got 1000\."),
    (lambda s: s.set_timesteps(timesteps=[700.5, 0]), r"integers in \[0, 999\]"),
    (lambda s: s.set_timesteps(timesteps=[]), "non-empty list of finite numbers"),
    (lambda s: s.set_timesteps(timesteps="999"), "non-empty list of finite numbers"),
])
def test_bad_custom_timesteps_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(DDPMScheduler())


def test_custom_schedules_that_cannot_combine_are_refused():
    with pytest.raises(ValueError, match=r"one of num_inference_steps or timesteps or sigmas; "
                                         r"got timesteps, sigmas\."):
        EulerDiscreteScheduler().set_timesteps(timesteps=[999, 0], sigmas=[10.0, 0.0])
    with pytest.raises(ValueError, match="exclude each other"):
        EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 0])
    with pytest.raises(ValueError, match="exclude each other"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 0])
    with pytest.raises(ValueError, match="at least two, positive but the last"):
        EulerDiscreteScheduler().set_timesteps(sigmas=[10.0])
    with pytest.raises(ValueError, match=r"sigmas must be strictly descending"):
        EulerDiscreteScheduler().set_timesteps(sigmas=[1.0, 3.0, 0.0])
    # a tensor or an array is as good as a list
    sched = DDPMScheduler()
    sched.set_timesteps(timesteps=torch.tensor([900, 500, 0]))
    assert sched.timesteps.tolist() == [900, 500, 0]


# ----------------------------------------------------------------- thresholding
@pytest.mark.parametrize("name, options", [
    ("DDPMScheduler", {}),
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver",
                                     "final_sigmas_type": "sigma_min"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type":
                                     "sigma_min", "prediction_type": "v_prediction"}),
])
def test_dynamic_thresholding_matches_diffusers(name, options):
    options = {"thresholding": True, "sample_max_value": 3.0, **options}
    ours, theirs = _pair(name, **options)
    for sched in (ours, theirs):
        sched.set_timesteps(12)
    x = _start(scale=2.0)
    result = _loop(ours, x, seed=2)
    _close(result, _loop(theirs, x, seed=2))
    plain = _pair(name, **{**options, "thresholding": False})[0]
    plain.set_timesteps(12)
    assert not torch.allclose(result, _loop(plain, x, seed=2))  # it changed the samples


def test_thresholding_pushes_saturated_pixels_inward():
    from diffusion.schedulers.options import dynamic_threshold

    x0 = torch.linspace(-4, 4, 101).reshape(1, 1, 1, 101)
    out = dynamic_threshold(x0, 0.9, 3.0)
    s = torch.quantile(x0.abs().flatten(), 0.9)  # 3.6, clamped to 3
    assert out.abs().max() == 1.0 and s > 3.0
    torch.testing.assert_close(out[..., 50:60], x0[..., 50:60] / 3.0)
    small = torch.full((1, 1, 2, 2), 0.5)
    assert torch.equal(dynamic_threshold(small, 0.995, 3.0), small)  # s clamps to 1: unchanged
    with pytest.raises(ValueError, match=r"sample_max_value must be"):
        DDIMScheduler(thresholding=True, sample_max_value=0.5)
    with pytest.raises(ValueError, match=r"dynamic_thresholding_ratio must be"):
        DDIMScheduler(dynamic_thresholding_ratio=0)


def test_thresholding_is_a_sampler_option_over_a_trained_process():
    from diffusion.sampling.sampler import SamplerSpec, sampler_options

    assert {"thresholding", "sample_max_value"} <= sampler_options("ddim")
    assert "beta_schedule" not in sampler_options("ddim")
    spec = SamplerSpec.from_config({"name": "ddim", "steps": 10, "thresholding": True})
    assert "thresholding=True" in spec.describe()
    built = spec.build(DDPMScheduler(clip_sample=False))
    assert isinstance(built, DDIMScheduler) and built.thresholding and not built.clip_sample


# ---------------------------------------------------------------- trained betas
def test_trained_betas_match_diffusers_and_survive_a_save(tmp_path):
    betas = torch.linspace(1e-4, 0.03, 100).tolist()
    ours = DDPMScheduler(num_train_timesteps=100, trained_betas=betas)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=100, trained_betas=betas)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(),
                               rtol=1e-6, atol=0)
    ours.save_pretrained(tmp_path)
    loaded = diffusers.DDPMScheduler.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.alphas_cumprod, theirs.alphas_cumprod)
    again = DDPMScheduler.from_pretrained(tmp_path)
    assert torch.equal(again.alphas_cumprod, ours.alphas_cumprod)
    with pytest.raises(ValueError, match=r"trained_betas has 99 values and num_train_timesteps "
                                         r"is 100: pass one beta per training step\."):
        DDPMScheduler(num_train_timesteps=100, trained_betas=betas[1:])
    with pytest.raises(ValueError, match=r"trained_betas must lie in \(0, 1\); got 1\.5"):
        DDPMScheduler(num_train_timesteps=2, trained_betas=[0.1, 1.5])


# -------------------------------------------------------- add_noise, init noise
@pytest.mark.parametrize("name", sorted(NoiseScheduler.SAMPLERS))
def test_add_noise_and_init_noise_sigma_match_diffusers(name):
    klass = NoiseScheduler.SAMPLERS[name]
    preset = NoiseScheduler.SAMPLER_PRESETS[name]
    ours, theirs = klass(**preset), getattr(diffusers, klass.__name__)(**preset)
    x0, noise = _start(3), _start(4)
    for sched in (ours, theirs):
        sched.set_timesteps(10)
    picks, their_picks = ours.timesteps[[0, 4, -1]], theirs.timesteps[[0, 4, -1]]
    _close(ours.add_noise(x0, noise, picks), theirs.add_noise(x0, noise, their_picks), tol=1e-6)
    _close(ours.add_noise(x0, noise, picks[1]), theirs.add_noise(x0, noise, picks[1:2]), tol=1e-6)
    sigma = theirs.init_noise_sigma
    assert float(ours.init_noise_sigma) == pytest.approx(float(sigma), rel=1e-6)
    if torch.is_tensor(sigma):  # diffusers users write init_noise_sigma.cpu()
        assert torch.is_tensor(ours.init_noise_sigma) and ours.init_noise_sigma.ndim == 0


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_add_noise_before_set_timesteps_uses_training_sigmas(name):
    ours, theirs = _pair(name, beta_start=0.0001, beta_end=0.02)
    x0, noise = _start(3), _start(4)
    t = torch.tensor([999, 500, 3])
    _close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), tol=1e-6)
    # the training process's x_t is that divided by sqrt(sigma^2 + 1)
    vp = DDPMScheduler().add_noise(x0, noise, t)
    sigma = ((1 - DDPMScheduler().alphas_cumprod[t]) / DDPMScheduler().alphas_cumprod[t]).sqrt()
    torch.testing.assert_close(ours.add_noise(x0, noise, t) / (sigma**2 + 1).sqrt()
                               .reshape(-1, 1, 1, 1).float(), vp, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 999\]; got 1000"):
        ours.add_noise(x0, noise, torch.tensor([1000, 1, 2]))


# ----------------------------------------- a loop that starts part-way down
@pytest.mark.parametrize("name, first", [
    ("EulerDiscreteScheduler", 4), ("HeunDiscreteScheduler", 6),
    ("EulerAncestralDiscreteScheduler", 5), ("DPMSolverMultistepScheduler", 3),
])
def test_a_loop_over_a_tail_of_timesteps_starts_there_as_in_diffusers(name, first):
    """Image-to-image as older diffusers code writes it: noise to timesteps[k], then loop
    over timesteps[k:] without set_begin_index; the first call places the run."""
    ours, theirs = _pair(name)
    for sched in (ours, theirs):
        sched.set_timesteps(10)
    x0, noise = _start(5), _start(6)
    start = theirs.add_noise(x0, noise, theirs.timesteps[first:first + 1])
    _close(ours.add_noise(x0, noise, ours.timesteps[first:first + 1]), start, tol=1e-6)
    _close(_loop(ours, start, ours.timesteps[first:], seed=7),
           _loop(theirs, start, theirs.timesteps[first:], seed=7))
    ours.set_timesteps(10)  # a loop from the first timestep is unchanged by the look-up
    theirs.set_timesteps(10)
    x = _start(8) * float(ours.init_noise_sigma)
    _close(_loop(ours, x, seed=9), _loop(theirs, x, seed=9))


def test_a_counted_call_out_of_order_is_still_refused():
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(10)
    x = _start()
    x = sched.step(_model(x, 0), sched.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match=r"call 1 of this run is at timestep 888, not 444\.0: "
                                         r"pass the entries of scheduler.timesteps in order"):
        sched.step(_model(x, 0), sched.timesteps[5], x)


# ------------------------------------------------------------------ defaults
def test_heun_defaults_are_diffusers_and_over_keeps_the_trained_process():
    theirs = diffusers.HeunDiscreteScheduler()
    torch.testing.assert_close(HeunDiscreteScheduler().betas, theirs.betas.double())
    assert HeunDiscreteScheduler().config["beta_start"] == 0.00085
    trained = DDPMScheduler()
    assert torch.equal(HeunDiscreteScheduler.over(trained).betas, trained.betas)
    assert HeunDiscreteScheduler(beta_schedule="cosine").config["beta_start"] is None
    for name in ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                 "DPMSolverMultistepScheduler"):
        ours, theirs = _pair(name)
        torch.testing.assert_close(ours.betas, theirs.betas.double())
