"""DDPM/DDIM schedulers: diffusers parity, closed forms, Gaussian oracles, dtypes and errors.

Run with ``-s`` to see the measured numbers (largest difference to diffusers, the
spread of DDIM at 10 steps).
"""

import json
import math

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
SPACINGS = ["leading", "trailing", "linspace"]
SHAPE = (2, 3, 4, 4)


def _x0_ref(shape=SHAPE, seed=3):
    """A fixed 'data point' in [-1, 1] that the fake model below believes in."""
    return 0.9 * torch.tanh(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def _fake_model(sched, x, t):
    """Target for x_0 = _x0_ref() at (x, t), perturbed so that it is not exact."""
    a = sched.alpha_bar(int(t))
    x0 = _x0_ref(x.shape).to(x.dtype)
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return sched.training_target(x0, eps, int(t)) + 0.1 * torch.sin(3 * x)


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def _compare_chains(ours, theirs, step_kwargs=None):
    """Step both schedulers from the same (x_t, model output) along our chain.

    Both draw their noise from equally seeded generators, in the same order.
    Returns the largest absolute difference of prev_sample and pred_original_sample.
    """
    step_kwargs = step_kwargs or {}
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    gen_ours, gen_theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for i, t in enumerate(ours.timesteps.tolist()):
        out = _fake_model(ours, x, t)
        last = i == len(ours.timesteps) - 1
        replay = torch.Generator().set_state(gen_theirs.get_state())
        a = ours.step(out, t, x, generator=gen_ours, **step_kwargs)
        b = theirs.step(out, t, x, generator=gen_theirs, **step_kwargs)
        expected = b.prev_sample
        if last and isinstance(ours, DDPMScheduler) and t > 0:
            # diffusers adds noise whenever t > 0, also on the last step; we return the mean.
            expected = expected - theirs._get_variance(t) ** 0.5 * torch.randn(SHAPE, generator=replay)
        worst = max(worst, _max_diff(a.prev_sample, expected),
                    _max_diff(a.pred_original_sample, b.pred_original_sample))
        x = a.prev_sample
    return worst


# ------------------------------------------------------------------ diffusers parity
@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize("schedule,theirs_name,start,end,rescale", [
    ("linear", "linear", 1e-4, 0.02, False),
    ("scaled_linear", "scaled_linear", 0.00085, 0.012, False),
    ("sigmoid", "sigmoid", 1e-4, 0.02, False),
    ("cosine", "squaredcos_cap_v2", None, None, False),
    ("linear", "linear", 1e-4, 0.02, True),
])
def test_alphas_cumprod_and_add_noise_match_diffusers(diffusers, schedule, theirs_name, start,
                                                      end, rescale):
    ours = DDPMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end,
                         rescale_betas_zero_snr=rescale, prediction_type="v_prediction")
    theirs = diffusers.DDPMScheduler(beta_schedule=theirs_name, beta_start=start or 1e-4,
                                     beta_end=end or 0.02, rescale_betas_zero_snr=rescale)
    assert ours.alphas_cumprod.dtype == torch.float64
    worst = _max_diff(ours.alphas_cumprod, theirs.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, 5, 5, generator=g), torch.randn(8, 3, 5, 5, generator=g)
    t = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    worst = max(worst, _max_diff(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t)),
                _max_diff(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t)))
    print(f"\n{schedule} rescale={rescale}: max |ours - diffusers| = {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [1, 7, 10, 50, 61, 1000])
def test_timesteps_match_diffusers(diffusers, spacing, n):
    ours, theirs = DDIMScheduler(timestep_spacing=spacing), diffusers.DDIMScheduler(
        timestep_spacing=spacing)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    ref = theirs.timesteps.tolist()
    if len(ref) == n + 1:
        # numpy's arange(T, 0, -T/n) sometimes yields one element too many: a spurious -1.
        assert spacing == "trailing" and ref[-1] == -1
        ref = ref[:n]
    assert ours.timesteps.tolist() == ref and ours.timesteps.dtype == torch.long


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddpm_steps_match_diffusers(diffusers, spacing, prediction_type, variance_type):
    kwargs = dict(prediction_type=prediction_type, variance_type=variance_type,
                  timestep_spacing=spacing)
    ours, theirs = DDPMScheduler(**kwargs), diffusers.DDPMScheduler(**kwargs)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    worst = _compare_chains(ours, theirs)
    print(f"\nDDPM {spacing} {prediction_type} {variance_type}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("kwargs", [
    dict(clip_sample=False),
    dict(beta_schedule="cosine", prediction_type="v_prediction", clip_sample_range=2.0),
    dict(steps_offset=1, timestep_spacing="leading", num_inference_steps=20),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
         num_inference_steps=50, timestep_spacing="trailing"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
])
def test_ddpm_other_settings_match_diffusers(diffusers, kwargs):
    kwargs = dict(kwargs)
    n = kwargs.pop("num_inference_steps", None)
    ours = DDPMScheduler(**kwargs)
    theirs = diffusers.DDPMScheduler(**{"beta_schedule": "linear", **kwargs}) if \
        kwargs.get("beta_schedule") != "cosine" else diffusers.DDPMScheduler(
            **{**kwargs, "beta_schedule": "squaredcos_cap_v2"})
    if n is None and not kwargs.get("rescale_betas_zero_snr"):
        pass  # the full 1000-step chain, as after construction
    else:
        ours.set_timesteps(n or 10)
        theirs.set_timesteps(n or 10)
    worst = _compare_chains(ours, theirs)
    print(f"\nDDPM {kwargs} n={n}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_steps_match_diffusers(diffusers, spacing, prediction_type, eta):
    kwargs = dict(prediction_type=prediction_type, timestep_spacing=spacing)
    ours, theirs = DDIMScheduler(**kwargs), diffusers.DDIMScheduler(**kwargs)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    if spacing == "linspace":
        # diffusers steps to t - T // n (1000 // 10 = 100); the linspace list is 111 apart.
        # With n = 9 its arithmetic lands on the list: 1000 // 9 = 111.
        theirs.num_inference_steps = 9
    worst = _compare_chains(ours, theirs, {"eta": eta})
    print(f"\nDDIM {spacing} {prediction_type} eta={eta}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("kwargs,n,eta", [
    (dict(set_alpha_to_one=False), 10, 1.0),
    (dict(steps_offset=1, clip_sample=False), 50, 0.0),
    (dict(beta_schedule="cosine", clip_sample=False), 50, 0.5),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
          timestep_spacing="trailing"), 25, 0.0),
])
def test_ddim_other_settings_match_diffusers(diffusers, kwargs, n, eta):
    ours = DDIMScheduler(**kwargs)
    theirs = diffusers.DDIMScheduler(
        **{**kwargs, "beta_schedule": kwargs.get("beta_schedule", "linear").replace(
            "cosine", "squaredcos_cap_v2")})
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    worst = _compare_chains(ours, theirs, {"eta": eta})
    print(f"\nDDIM {kwargs} n={n} eta={eta}: max diff {worst:.2e}")
    assert worst <= 1e-5
