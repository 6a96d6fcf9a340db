"""DDPM/DDIM against diffusers: the same numbers for equal settings.

Run with ``-s`` to see the largest differences measured.
"""

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, DDPMScheduler
from scheduler_helpers import PREDICTION_TYPES, SPACINGS, _compare_chains, _max_diff


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _diffusers_names(kwargs):
    """Our constructor arguments as diffusers spells them (its cosine is squaredcos_cap_v2)."""
    if kwargs.get("beta_schedule") == "cosine":
        return {**kwargs, "beta_schedule": "squaredcos_cap_v2"}
    return kwargs


def _with_float64_tables(theirs):
    """diffusers' scheduler with its own betas promoted to float64 and its tables rebuilt.

    diffusers keeps alphas_cumprod in float32; in its step 1 - a_t / a_prev and
    1 - a_t cancel catastrophically at small t (relative errors ~1e-4 at t < 5),
    which alone moves prev_sample by ~1e-4. With float64 tables both sides
    compute coefficients in float64 and apply them in float32, so the comparison
    measures the algorithm, not diffusers' rounding.
    """
    theirs.betas = theirs.betas.double()
    theirs.alphas = 1.0 - theirs.betas
    theirs.alphas_cumprod = torch.cumprod(theirs.alphas, dim=0)
    if hasattr(theirs, "final_alpha_cumprod"):
        one = torch.tensor(1.0, dtype=torch.float64)
        theirs.final_alpha_cumprod = one if theirs.config.set_alpha_to_one else \
            theirs.alphas_cumprod[0]
    return theirs


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
    ours = DDPMScheduler(**kwargs)
    theirs = _with_float64_tables(diffusers.DDPMScheduler(**kwargs))
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    worst = _compare_chains(ours, theirs)
    print(f"\nDDPM {spacing} {prediction_type} {variance_type}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("kwargs,n", [
    (dict(clip_sample=False), None),  # the full 1000-step chain, as after construction
    (dict(beta_schedule="cosine", prediction_type="v_prediction", clip_sample_range=2.0), None),
    (dict(steps_offset=1, timestep_spacing="leading"), 20),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
          timestep_spacing="trailing"), 50),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
          timestep_spacing="trailing"), 10),
])
def test_ddpm_other_settings_match_diffusers(diffusers, kwargs, n):
    ours = DDPMScheduler(**kwargs)
    theirs = _with_float64_tables(diffusers.DDPMScheduler(**_diffusers_names(kwargs)))
    if n is not None:
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
    worst = _compare_chains(ours, theirs)
    print(f"\nDDPM {kwargs} n={n}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_steps_match_diffusers(diffusers, spacing, prediction_type, eta):
    kwargs = dict(prediction_type=prediction_type, timestep_spacing=spacing)
    ours = DDIMScheduler(**kwargs)
    theirs = _with_float64_tables(diffusers.DDIMScheduler(**kwargs))
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
    theirs = _with_float64_tables(diffusers.DDIMScheduler(**_diffusers_names(kwargs)))
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    worst = _compare_chains(ours, theirs, {"eta": eta})
    print(f"\nDDIM {kwargs} n={n} eta={eta}: max diff {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_steps_match_native_float32_diffusers(diffusers, name, prediction_type):
    """Against diffusers' own float32 tables too, at its default (leading) spacing."""
    ours = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}[name](
        prediction_type=prediction_type)
    theirs = getattr(diffusers, name)(prediction_type=prediction_type)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    step_kwargs = {"eta": 1.0} if name == "DDIMScheduler" else {}
    worst = _compare_chains(ours, theirs, step_kwargs)
    print(f"\nnative {name} {prediction_type}: max diff {worst:.2e}")
    assert worst <= 1e-5
