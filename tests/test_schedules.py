"""Beta schedules: shapes, dtypes, defaults, the T-scaling rule and diffusers' definitions."""

import math

import pytest
import torch

from diffusion.schedulers.betas import (
    BETA_SCHEDULES,
    cosine,
    get_beta_schedule,
    linear,
    rescale_zero_terminal_snr,
    scaled_linear,
    sigmoid,
)


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_every_schedule_is_float64_of_length_T_in_unit_interval(name, T):
    betas = get_beta_schedule(name, T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert (betas > 0).all() and (betas < 1).all()
    assert (betas[1:] >= betas[:-1]).all()  # noise only grows


def test_linear_ddpm_endpoints_at_1000():
    betas = linear(1000)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)


@pytest.mark.parametrize("fn", [linear, scaled_linear, sigmoid])
def test_default_endpoints_scale_with_T_so_the_total_noise_is_kept(fn):
    total = fn(1000).sum().item()
    for T in (250, 500, 2000):
        assert fn(T).sum().item() == pytest.approx(total, rel=2e-3)
    assert linear(500)[0].item() == pytest.approx(2e-4)
    assert linear(500)[-1].item() == pytest.approx(0.04)


def test_explicit_endpoints_are_used_as_given():
    betas = linear(500, beta_start=1e-4, beta_end=0.02)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    betas = scaled_linear(10, beta_start=0.00085, beta_end=0.012)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)


def test_scaled_linear_is_linear_in_sqrt_beta():
    root = scaled_linear(1000).sqrt()
    steps = root[1:] - root[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=0, atol=1e-12)


def test_cosine_follows_its_alpha_bar_and_is_clipped():
    T, s = 1000, 0.008
    alpha_bar = torch.cumprod(1 - cosine(T), 0)
    u = torch.arange(1, T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    expected = f / math.cos(s / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(alpha_bar[:-1], expected[:-1], rtol=1e-10, atol=1e-12)
    assert cosine(T).max().item() == pytest.approx(0.999)  # the singular last beta is clipped


def test_sigmoid_spans_its_endpoints():
    betas = sigmoid(1000, beta_start=1e-4, beta_end=0.02)
    lo, hi = torch.sigmoid(torch.tensor([-6.0, 6.0], dtype=torch.float64)).tolist()
    assert betas[0].item() == pytest.approx(1e-4 + lo * (0.02 - 1e-4))
    assert betas[-1].item() == pytest.approx(1e-4 + hi * (0.02 - 1e-4))


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_zero_terminal_snr_rescale(name):
    betas = get_beta_schedule(name, 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    alpha_bar, new_alpha_bar = torch.cumprod(1 - betas, 0), torch.cumprod(1 - rescaled, 0)
    assert rescaled.dtype == torch.float64
    assert new_alpha_bar[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert new_alpha_bar[0].item() == pytest.approx(alpha_bar[0].item(), rel=1e-12)


def test_unknown_schedule_lists_the_valid_names():
    with pytest.raises(ValueError, match="cosine, linear, scaled_linear, sigmoid"):
        get_beta_schedule("quadratic", 1000)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 1"):
        linear(0)
    with pytest.raises(ValueError, match="larger T"):
        linear(10)  # default end 0.02 * 1000 / 10 = 2 is not a variance
    with pytest.raises(ValueError, match="no beta_start/beta_end"):
        get_beta_schedule("cosine", 1000, beta_start=1e-4)


def test_matches_diffusers_definitions():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
    from diffusers.schedulers.scheduling_ddpm import (
        rescale_zero_terminal_snr as diffusers_rescale,
    )

    def theirs(schedule, start, end):
        return diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end).betas

    pairs = [
        (linear(1000, 1e-4, 0.02), theirs("linear", 1e-4, 0.02)),
        (scaled_linear(1000, 0.00085, 0.012), theirs("scaled_linear", 0.00085, 0.012)),
        (sigmoid(1000, 1e-4, 0.02), theirs("sigmoid", 1e-4, 0.02)),
        (cosine(1000), betas_for_alpha_bar(1000)),
    ]
    for ours, ref in pairs:
        torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-7)
    betas = linear(1000)
    torch.testing.assert_close(rescale_zero_terminal_snr(betas), diffusers_rescale(betas))
