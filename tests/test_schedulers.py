"""DDPM/DDIM schedulers: closed forms, Gaussian oracles, dtypes, API and errors
(diffusers parity is in test_schedulers_diffusers.py).

Run with ``-s`` to see the measured numbers (the spread of DDIM at 10 steps).
"""

import json
import math

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput
from scheduler_helpers import PREDICTION_TYPES, SHAPE, SPACINGS, _fake_model


# ---------------------------------------------------------------------- closed forms
def _alpha_bar_reference(betas, t):
    """prod_{s <= t} (1 - beta_s), summed in log space: independent of the cumprod."""
    return math.exp(torch.log1p(-betas[: t + 1]).sum().item())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginal_exactly(schedule):
    sched = DDPMScheduler(beta_schedule=schedule)
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(1, 7).expand(4, 7)
    t = torch.tensor([0, 10, 500, 999])
    a = torch.tensor([_alpha_bar_reference(sched.betas, int(s)) for s in t], dtype=torch.float64)
    mean = sched.add_noise(x0, torch.zeros_like(x0), t)  # noise 0: the mean
    std = sched.add_noise(torch.zeros_like(x0), torch.ones_like(x0), t)  # x0 0: the std
    torch.testing.assert_close(mean, a.sqrt()[:, None] * x0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(std, (1 - a).sqrt()[:, None].expand_as(x0), rtol=1e-10, atol=0)


@pytest.mark.parametrize("t", [0, 50, 500, 999])
def test_forward_marginal_empirically(t):
    sched, n, x0 = DDPMScheduler(), 200_000, 0.7
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    x_t = sched.add_noise(torch.full((n, 1), x0, dtype=torch.float64), noise, torch.full((n,), t))
    a = sched.alpha_bar(t)
    assert x_t.mean().item() == pytest.approx(math.sqrt(a) * x0, abs=5 * math.sqrt((1 - a) / n))
    assert x_t.var().item() == pytest.approx(1 - a, rel=0.015, abs=1e-6)


@pytest.mark.parametrize("n", [None, 10])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_posterior_matches_bayes_rule(n, spacing):
    """q(x_prev | x_t, x_0) from q(x_prev | x_0) q(x_t | x_prev): a product of Gaussians."""
    sched = DDPMScheduler(timestep_spacing=spacing)
    if n:
        sched.set_timesteps(n)
    x0, x_t = torch.tensor([[-0.8, 0.1, 0.6]], dtype=torch.float64), torch.tensor(
        [[0.3, -1.2, 2.0]], dtype=torch.float64)
    for t in sched.timesteps.tolist()[:-1]:
        prev = sched.previous_timestep(t)
        a_prev, a_t = sched.alpha_bar(prev), sched.alpha_bar(t)
        alpha = a_t / a_prev  # q(x_t | x_prev) = N(sqrt(alpha) x_prev, 1 - alpha)
        precision = 1 / (1 - a_prev) + alpha / (1 - alpha)
        mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(alpha) * x_t / (1 - alpha))
        mean = mean / precision
        torch.testing.assert_close(sched.posterior_mean(x0, x_t, t), mean, rtol=1e-9, atol=1e-12)
        assert sched.posterior_variance(t) == pytest.approx(1 / precision, rel=1e-9)


def test_ddpm_step_samples_the_posterior():
    """With the true x_0 as model output, one step draws from q(x_prev | x_t, x_0)."""
    sched = DDPMScheduler(prediction_type="sample", clip_sample=False)
    n, t = 100_000, 300
    x0, x_t = torch.full((n, 1), 0.4), torch.full((n, 1), -0.2)
    out = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    mean, var = sched.posterior_mean(x0[:1], x_t[:1], t).item(), sched.posterior_variance(t)
    assert out.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert out.var().item() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_epsilon_x0_v_conversions_round_trip(prediction_type):
    sched = DDPMScheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 2, 3, generator=g, dtype=torch.float64), torch.randn(
        6, 2, 3, generator=g, dtype=torch.float64)
    for t in (torch.tensor([0, 1, 100, 500, 998, 999]), 250):
        x_t = sched.add_noise(x0, eps, t)
        target = sched.training_target(x0, eps, t)
        v = sched.get_velocity(x0, eps, t)
        torch.testing.assert_close(sched.pred_original_sample(target, t, x_t), x0)
        torch.testing.assert_close(sched.pred_epsilon(target, t, x_t), eps)
        torch.testing.assert_close(sched.pred_velocity(target, t, x_t), v)
    expected = {"epsilon": eps, "sample": x0, "v_prediction": v}[prediction_type]
    torch.testing.assert_close(target, expected)


def test_ddim_eta_one_is_the_ddpm_fixed_small_step():
    ddpm = DDPMScheduler(clip_sample=False)
    ddim = DDIMScheduler(clip_sample=False, eta=1.0)
    for sched in (ddpm, ddim):
        sched.set_timesteps(20)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in ddpm.timesteps.tolist():
        out = _fake_model(ddpm, x, t)
        a = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ddim.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        x = a


# --------------------------------------------------------------------------- oracles
MU, S = 0.5, 0.2


def _gaussian_oracle(sched, x, t):
    """Exact epsilon for data ~ N(MU, S^2): E[eps | x_t]."""
    a = sched.alpha_bar(int(t))
    return math.sqrt(1 - a) * (x - math.sqrt(a) * MU) / (a * S**2 + 1 - a)


def _sample(sched, n=4000, steps=None, **step_kwargs):
    if steps is not None:
        sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    for t in sched.timesteps.tolist():
        x = sched.step(_gaussian_oracle(sched, x, t), t, x, generator=g, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("cls,kwargs,eta", [
    (DDPMScheduler, dict(variance_type="fixed_small"), None),
    (DDPMScheduler, dict(variance_type="fixed_large"), None),
    (DDIMScheduler, {}, 0.0),
    (DDIMScheduler, {}, 1.0),
], ids=["ddpm-fixed_small", "ddpm-fixed_large", "ddim-eta0", "ddim-eta1"])
def test_exact_predictor_recovers_the_gaussian_over_1000_steps(cls, kwargs, eta):
    sched = cls(clip_sample=False, **kwargs)
    x = _sample(sched, **({} if eta is None else {"eta": eta}))
    mean, std = x.mean().item(), x.std().item()
    print(f"\n{cls.__name__} {kwargs} eta={eta}: mean {mean:.4f} (mu {MU}), std {std:.4f}")
    assert mean == pytest.approx(MU, rel=0.03)
    assert std == pytest.approx(S, rel=0.05)


def test_ddim_with_10_steps_shrinks_the_spread_even_when_exact():
    """A measured property of the discretisation, not a failure: std about half of s."""
    x = _sample(DDIMScheduler(clip_sample=False), steps=10)
    ratio = x.std().item() / S
    print(f"\nDDIM 10 steps, exact predictor: mean {x.mean().item():.4f}, std/s = {ratio:.3f}")
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert 0.35 < ratio < 0.65


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_with_the_one_point_oracle_returns_the_point(steps, spacing):
    sched = DDIMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    x0 = 0.9 * torch.tanh(torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for t in sched.timesteps.tolist():
        a = sched.alpha_bar(t)
        eps = (x.double() - math.sqrt(a) * x0.double()) / math.sqrt(1 - a)
        x = sched.step(eps.float(), t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-4)


# ------------------------------------------------------------ dtypes, shapes, devices
def _one_step(sched, shape, dtype, device="cpu", index=3):
    sched.set_timesteps(10)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    t = sched.timesteps[index]
    out = _fake_model(sched, x.double(), t).to(dtype)
    return sched.step(out, t, x, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (5, 7)])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-6), (torch.bfloat16, 0.05)])
def test_step_keeps_dtype_and_shape(cls, shape, dtype, atol):
    noisy = _one_step(cls(**({"eta": 1.0} if cls is DDIMScheduler else {})), shape, dtype)
    for got in noisy:
        assert got.dtype == dtype and got.shape == shape and got.isfinite().all()
    # Without noise (DDIM with eta 0, DDPM's last step) the numbers match float32's.
    index = 3 if cls is DDIMScheduler else 9
    ref = _one_step(cls(), shape, torch.float32, index=index)
    out = _one_step(cls(), shape, dtype, index=index)
    for got, want in zip(out, ref, strict=True):
        assert got.dtype == dtype and got.shape == shape
        torch.testing.assert_close(got.float(), want, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_add_noise_broadcasts_per_sample_timesteps(dtype):
    sched = DDPMScheduler()
    x0, noise = torch.ones(3, 2, 4, 4, dtype=dtype), torch.zeros(3, 2, 4, 4, dtype=dtype)
    t = torch.tensor([0, 500, 999])
    out = sched.add_noise(x0, noise, t)
    assert out.dtype == dtype and out.shape == x0.shape
    expected = sched.alphas_cumprod[t].sqrt()[:, None, None, None].expand_as(x0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2 if dtype == torch.bfloat16
                               else 1e-6, atol=0)
    assert sched.add_noise(x0, noise, 500).equal(out[1:2].expand_as(x0))  # an int timestep


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_cuda_matches_cpu_with_a_cpu_generator(cls):
    kwargs = {"eta": 1.0} if cls is DDIMScheduler else {}
    cpu = _one_step(cls(**kwargs), SHAPE, torch.float32)
    gpu = _one_step(cls(**kwargs), SHAPE, torch.float32, device="cuda")
    for got, want in zip(gpu, cpu, strict=True):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-5)
    sched = cls()
    t = torch.tensor([3, 900], device="cuda")
    x = torch.ones(2, 3, device="cuda")
    torch.testing.assert_close(sched.add_noise(x, x, t).cpu(), sched.add_noise(x.cpu(), x.cpu(),
                                                                               t.cpu()))


# --------------------------------------------------------------- timesteps and API
def test_previous_timestep_is_read_from_the_list():
    sched = DDIMScheduler(timestep_spacing="trailing")
    sched.set_timesteps(7)  # 1000 / 7 is not an integer: the gaps are 142 or 143
    steps = sched.timesteps.tolist()
    assert steps == [999, 856, 713, 570, 428, 285, 142]
    assert [sched.previous_timestep(t) for t in steps] == steps[1:] + [-1]
    assert sched.previous_timestep(torch.tensor(856)) == 713
    # The step from 999 lands on alpha_bar(856), not on 999 - 1000 // 7 = 857.
    x, eps = torch.ones(1, 2), torch.zeros(1, 2)
    x0 = sched.step(eps, 999, x).pred_original_sample
    expected = math.sqrt(sched.alpha_bar(856)) * x0
    torch.testing.assert_close(sched.step(eps, 999, x).prev_sample, expected)


def test_construction_defaults_to_every_training_step():
    sched = DDPMScheduler(num_train_timesteps=50, beta_schedule="cosine")
    assert sched.timesteps.tolist() == list(range(49, -1, -1)) and len(sched) == 50
    assert sched.num_inference_steps is None
    sched.set_timesteps(5, device="cpu")
    assert sched.num_inference_steps == 5 and sched.timesteps.tolist() == [40, 30, 20, 10, 0]


def test_ddpm_variance_types_and_last_step():
    sched = DDPMScheduler()
    sched.set_timesteps(10)  # 900, ..., 100, 0
    a = sched.alpha_bar
    assert sched.variance(900) == pytest.approx((1 - a(800)) / (1 - a(900)) * (1 - a(900) / a(800)))
    # at the last step the posterior variance is 0; its log is clipped to the step before
    assert sched.variance(0) == sched.variance(100) > 0
    large = DDPMScheduler(variance_type="fixed_large")
    large.set_timesteps(10)
    assert large.variance(900) == pytest.approx(1 - a(900) / a(800))
    # the last step returns the mean: no noise is drawn
    x = torch.ones(2, 3)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = large.step(torch.zeros_like(x), 0, x, generator=g)
    assert g.get_state().equal(state)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample)


def test_config_round_trips_and_serialises():
    for sched in (DDPMScheduler(beta_schedule="cosine", variance_type="fixed_large"),
                  DDIMScheduler(prediction_type="v_prediction", eta=0.5, set_alpha_to_one=False)):
        config = json.loads(json.dumps(sched.config))
        clone = type(sched).from_config(config)
        assert clone.config == sched.config and clone.betas.equal(sched.betas)
        assert type(sched).from_config(config, clip_sample=False).clip_sample is False
        assert repr(sched).startswith(type(sched).__name__ + "(num_train_timesteps=1000")
    ddim = DDIMScheduler()
    assert ddim.config["eta"] == 0.0 and ddim.config["steps_offset"] == 0
    assert DDPMScheduler().config["variance_type"] == "fixed_small"


def test_step_output_unpacks_like_diffusers():
    out = _one_step(DDIMScheduler(), SHAPE, torch.float32)
    assert isinstance(out, SchedulerOutput)
    prev, x0 = out
    assert prev is out.prev_sample and out[0] is prev and out[1] is x0
    assert out["pred_original_sample"] is x0 and out[:1] == (prev,)


@pytest.mark.parametrize("cls,kwargs,match", [
    (DDPMScheduler, dict(beta_schedule="quadratic"), "beta_schedule must be one of"),
    (DDPMScheduler, dict(prediction_type="x0"), "prediction_type must be one of"),
    (DDPMScheduler, dict(timestep_spacing="even"), "timestep_spacing must be one of"),
    (DDPMScheduler, dict(variance_type="learned"), "variance_type must be one of"),
    (DDPMScheduler, dict(num_train_timesteps=0), "num_train_timesteps"),
    (DDPMScheduler, dict(clip_sample_range=0.0), "clip_sample_range"),
    (DDPMScheduler, dict(clip_sample="yes"), "clip_sample must be one of"),
    (DDPMScheduler, dict(steps_offset=-1), "steps_offset"),
    (DDPMScheduler, dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr"),
    (DDPMScheduler, dict(beta_schedule="cosine", beta_end=0.02), "no beta_start/beta_end"),
    (DDIMScheduler, dict(eta=1.5), "eta must be"),
    (DDIMScheduler, dict(set_alpha_to_one=None), "set_alpha_to_one"),
])
def test_bad_arguments_raise_one_clear_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_calls_raise_one_clear_error():
    sched = DDIMScheduler(steps_offset=1)
    for n in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1"):
            sched.set_timesteps(n)
    with pytest.raises(ValueError, match="steps_offset=1 pushes"):
        sched.set_timesteps(1000)
    sched.set_timesteps(10)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="timestep 5 is not in this scheduler's timesteps"):
        sched.step(x, 5, x)
    with pytest.raises(ValueError, match="one timestep for the whole batch"):
        sched.step(x, torch.tensor([901, 801]), x)
    with pytest.raises(ValueError, match="eta must be"):
        sched.step(x, 901, x, eta=-0.1)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\]"):
        sched.add_noise(x, x, 1000)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_tensor_timesteps_out_of_range_are_an_error(cls, prediction_type):
    """t = -1 used to index alpha_bar(T - 1) and t = T an IndexError; the epsilon target
    did not look at t at all."""
    sched = cls(prediction_type=prediction_type)
    x = torch.zeros(3, 1, 2, 2)
    for t in ([0, -1, 5], [999, 1000, 0]):
        bad = -1 if -1 in t else 1000
        for call in (sched.add_noise, sched.training_target):
            with pytest.raises(ValueError, match=rf"^timesteps must be in \[0, 999\]; "
                                                 rf"got {bad}\.$"):
                call(x, x, torch.tensor(t))
    with pytest.raises(ValueError, match=r"^timesteps must be a tensor of integer dtype"):
        sched.add_noise(x, x, torch.tensor([1.0, 2.0, 3.0]))
    sched.add_noise(x, x, torch.tensor([0, 500, 999]))  # the whole range is fine
