"""Continuous-time noise processes: their marginals against closed forms, their SDE
coefficients against the marginals they must produce, the DDPM table seen in continuous
time, and the conversions between a network's prediction and the score."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.processes import (
    PROCESSES,
    CosineVPProcess,
    DiscreteProcess,
    SubVPProcess,
    VEProcess,
    VPProcess,
    sigma_max_from_data,
)
from diffusion.schedulers import DDPMScheduler

CONTINUOUS = [VPProcess(), SubVPProcess(), VEProcess(), VPProcess(beta_min=0.5, beta_max=5.0),
              VEProcess(sigma_min=0.002, sigma_max=80.0), CosineVPProcess()]
IDS = ["vp", "subvp", "ve", "vp-0.5-5", "ve-0.002-80", "vp-cosine"]


def test_closed_forms_of_song_et_al():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    vp = VPProcess()
    log_mean = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1  # Song et al., eq. 33
    torch.testing.assert_close(vp.alpha(t), log_mean.exp())
    torch.testing.assert_close(vp.sigma(t) ** 2, 1 - (2 * log_mean).exp())
    torch.testing.assert_close(SubVPProcess().sigma(t), 1 - (2 * log_mean).exp())
    ve = VEProcess()
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    assert ve.prior_std == pytest.approx(math.sqrt(1 + 50**2))
    assert vp.prior_std == pytest.approx(1.0, abs=1e-6)
    f, g2 = vp.sde(t)
    torch.testing.assert_close(f, -0.5 * (0.1 + t * 19.9))
    torch.testing.assert_close(g2, 0.1 + t * 19.9)
    f, g2 = ve.sde(t)
    torch.testing.assert_close(g2, ve.sigma(t) ** 2 * 2 * math.log(5000))
    _, g2 = SubVPProcess().sde(t)
    torch.testing.assert_close(g2, (0.1 + t * 19.9) * (1 - (4 * log_mean).exp()))


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_the_sde_produces_the_marginals(process):
    """Integrate the moment equations of dx = f x dt + g dW, dm/dt = f m and dv/dt = 2 f v +
    g^2, from t_min (m = alpha, v = sigma^2 there) with RK4: they land on alpha(t) and
    sigma(t)^2 at every later t."""
    def rhs(t, m, v):
        f, g2 = process.sde(t)
        return f * m, 2 * f * v + g2

    t0 = process.t_min
    m, v = float(process.alpha(t0)), float(process.sigma(t0)) ** 2
    steps = 1000
    h = (1.0 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = rhs(t, m, v)
        k2 = rhs(t + h / 2, m + h / 2 * k1[0], v + h / 2 * k1[1])
        k3 = rhs(t + h / 2, m + h / 2 * k2[0], v + h / 2 * k2[1])
        k4 = rhs(t + h, m + h * k3[0], v + h * k3[1])
        m = m + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        v = v + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    assert float(m) == pytest.approx(float(process.alpha(1.0)), rel=1e-8, abs=1e-12)
    assert float(v) == pytest.approx(float(process.sigma(1.0)) ** 2, rel=1e-7)


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_derivatives_match_finite_differences(process):
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    d_log_alpha = (torch.log(process.alpha(t + h)) - torch.log(process.alpha(t - h))) / (2 * h)
    d_sigma2 = (process.sigma(t + h) ** 2 - process.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(process.d_log_alpha(t), d_log_alpha, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(process.d_sigma2(t), d_sigma2, rtol=1e-6, atol=1e-8)


def test_the_cosine_vp_process_is_ddpms_cosine_table_at_its_steps():
    """DDPM's cosine table (Nichol & Dhariwal; betas clipped at 0.999, which only its last
    steps reach) is alpha(t)^2 at t t_end = (i + 1) / T, and beta(t) = g^2 is VP's."""
    process, table = CosineVPProcess(), DDPMScheduler(beta_schedule="cosine").alphas_cumprod
    steps = torch.arange(980)
    t = (steps + 1).double() / 1000 / process.t_end
    torch.testing.assert_close(process.alpha(t) ** 2, table[steps].double(), rtol=1e-6,
                               atol=1e-12)
    f, g2 = process.sde(t)
    torch.testing.assert_close(g2, -2 * f)  # variance preserving: g^2 = beta = -2 f
    assert float(process.alpha(1.0)) == pytest.approx(0.0084, abs=1e-4)
    with pytest.raises(ValueError, match="t_end must be"):
        CosineVPProcess(t_end=1.0)


def test_a_ddpm_table_in_continuous_time_is_that_table_at_its_steps():
    sched = DDPMScheduler(beta_schedule="cosine")
    process = DiscreteProcess.of(sched)
    s = torch.tensor([0, 1, 250, 998, 999])
    t = s.double() / 999
    torch.testing.assert_close(process.alpha(t) ** 2, sched.alphas_cumprod[s])
    torch.testing.assert_close(process.model_time(t), s.double())
    # between two steps: geometric in alpha_bar, the step's own beta spread evenly
    mid = process.alpha((s[2] + 0.5) / 999) ** 2
    torch.testing.assert_close(mid, (sched.alphas_cumprod[250] * sched.alphas_cumprod[251]).sqrt())
    f = process.d_log_alpha((s[2] + 0.5) / 999)  # d log alpha / ds = log(1 - beta) / 2
    torch.testing.assert_close(f / 999, 0.5 * torch.log(1 - sched.betas[251]))
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(process.add_noise(x0, noise, t[:4].float()),
                               sched.add_noise(x0, noise, s[:4]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="decreasing values in"):
        DiscreteProcess(torch.tensor([0.5, 0.9]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", ["vp", "vp_cosine", "subvp", "ve"])
def test_predictions_convert_to_the_true_noise_and_score(name, prediction_type):
    """A network that predicts its target exactly gives back x_0, eps and score -eps / sigma."""
    process = PROCESSES[name](prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, generator=g).double(), torch.randn(5, 2, 3, generator=g).double()
    t = torch.tensor([1e-3, 0.1, 0.4, 0.8, 1.0], dtype=torch.float64)
    x = process.add_noise(x0, eps, t)
    target = process.training_target(x0, eps, t)
    got_x0, got_eps = process.pred_x0_eps(target, x, t)
    torch.testing.assert_close(got_eps, eps)
    torch.testing.assert_close(got_x0, x0, rtol=1e-6, atol=1e-6)
    sigma = process.sigma(t).reshape(-1, 1, 1)
    torch.testing.assert_close(process.score(target, x, t), -eps / sigma)
    a, s = process.normalised(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t))


def test_score_of_a_gaussian_is_exact():
    """x_0 ~ N(0, c^2): p_t = N(0, alpha^2 c^2 + sigma^2), whose score is -x / var; the
    epsilon that implies it is sigma x / var, and ``score`` recovers the score from it."""
    process = VEProcess(sigma_max=20.0)
    t = torch.tensor(0.6, dtype=torch.float64)
    c = 0.7
    x = torch.linspace(-3, 3, 11, dtype=torch.float64).reshape(11, 1)
    var = process.alpha(t) ** 2 * c**2 + process.sigma(t) ** 2
    eps = process.sigma(t) * x / var
    torch.testing.assert_close(process.score(eps, x, t), -x / var)


def test_sigma_max_is_the_largest_pairwise_distance():
    images = torch.zeros(3, 1, 2, 2)
    images[1] += 1.0
    images[2, 0, 0, 0] = -1.0
    assert sigma_max_from_data(images) == pytest.approx(math.sqrt(4 + 3))  # images 1 and 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="beta_max must be"):
        VPProcess(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_min must be"):
        VEProcess(sigma_min=0.0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        VPProcess(prediction_type="score")
    with pytest.raises(ValueError, match="t_min must be"):
        VEProcess(t_min=1.0)
    assert VPProcess(**VPProcess(beta_max=12.0).config).beta_max == 12.0
