"""Shared pieces of the scheduler tests: settings and a near-optimal model."""

import math

import torch

from diffusion.schedulers import DDPMScheduler

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


def dpm_exact_step(algorithm, q, sigma_s, sigma_t, x, z=0.0):
    """The exact DPM-Solver step of x from noise-to-signal ratio sigma_s to sigma_t when the
    solver's output (x_0, or eps for ``dpmsolver``) is q(lambda) = c0 + c1 lambda + c2
    lambda^2 along it, lambda = -log(sigma); z: the SDE's noise."""
    c0, c1, c2 = q
    lam_s, lam_t = -math.log(sigma_s), -math.log(sigma_t)
    a_s, a_t = 1 / math.sqrt(1 + sigma_s**2), 1 / math.sqrt(1 + sigma_t**2)
    if algorithm == "dpmsolver++":  # x_t = sigma_t/sigma_s x + sigma_t int e^l x0(l) dl
        def F(v):
            return math.exp(v) * (c0 + c1 * (v - 1) + c2 * (v * v - 2 * v + 2))
        return (sigma_t * a_t) / (sigma_s * a_s) * x + sigma_t * a_t * (F(lam_t) - F(lam_s))
    if algorithm == "dpmsolver":  # x_t = alpha_t/alpha_s x - alpha_t int e^-l eps(l) dl
        def F(v):
            return math.exp(-v) * (c0 + c1 * (v + 1) + c2 * (v * v + 2 * v + 2))
        return a_t / a_s * x + a_t * (F(lam_t) - F(lam_s))

    def F(v):  # SDE: the same with e^-h on x, 2 alpha_t int e^(-2 (l_t - l)) x0(l) dl, noise
        return math.exp(2 * v) * (c0 / 2 + c1 * (v / 2 - 0.25) + c2 * (v * v / 2 - v / 2 + 0.25))
    ratio = sigma_t / sigma_s
    return (sigma_t * a_t) / (sigma_s * a_s) * ratio * x \
        + 2 * a_t * math.exp(-2 * lam_t) * (F(lam_t) - F(lam_s)) \
        + sigma_t * a_t * math.sqrt(1 - ratio**2) * z
