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


def _fake_model(sched, x, t, mu=0.3, s=0.5):
    """A near-optimal model for data ~ N(mu, s^2), in the scheduler's prediction type.

    Its x_0 and epsilon estimates are the exact posterior means, so its outputs
    stay of order one as a trained model's do; a small perturbation keeps it
    from being exact.
    """
    a = sched.alpha_bar(int(t))
    r = (x - math.sqrt(a) * mu) / (a * s**2 + 1 - a)
    x0, eps = mu + s**2 * math.sqrt(a) * r, math.sqrt(1 - a) * r
    return sched.training_target(x0, eps, int(t)) + 0.01 * torch.sin(3 * x)


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
            their_noise = torch.randn(SHAPE, generator=replay)
            expected = expected - theirs._get_variance(t) ** 0.5 * their_noise
        worst = max(worst, _max_diff(a.prev_sample, expected),
                    _max_diff(a.pred_original_sample, b.pred_original_sample))
        x = a.prev_sample
    return worst


# ------------------------------------------------------------------ diffusers parity
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
