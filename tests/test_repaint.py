"""RePaintScheduler: diffusers' timestep list and step from the same inputs and generator, and
its resampling jump against the forward process's closed form.

Run with ``-s`` to see the largest differences measured.
"""

import math

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, RePaintScheduler
from diffusion.schedulers.repaint import repaint_indices
from scheduler_helpers import SHAPE, _fake_model, _max_diff


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _theirs(diffusers, **kwargs):
    """diffusers' RePaintScheduler with float64 tables, so both sides compute coefficients in
    float64 and apply them in float32 (see test_schedulers_diffusers)."""
    theirs = diffusers.RePaintScheduler(**kwargs)
    theirs.betas = theirs.betas.double()
    theirs.alphas = 1.0 - theirs.betas
    theirs.alphas_cumprod = torch.cumprod(theirs.alphas, dim=0)
    theirs.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return theirs


@pytest.mark.parametrize("n,jump_length,jump_n_sample", [
    (250, 10, 10), (50, 10, 10), (100, 5, 3), (7, 3, 2), (20, 10, 1), (10, 20, 5)])
def test_timesteps_match_diffusers(diffusers, n, jump_length, jump_n_sample):
    ours, theirs = RePaintScheduler(), diffusers.RePaintScheduler()
    ours.set_timesteps(n, jump_length, jump_n_sample)
    theirs.set_timesteps(n, jump_length, jump_n_sample)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    if jump_n_sample == 1:  # no jumps: the plain chain
        assert ours.timesteps.tolist() == sorted(set(ours.timesteps.tolist()), reverse=True)


def test_jumps_visit_each_segment_jump_n_sample_times():
    order = repaint_indices(30, 10, 3)
    downs = [b for a, b in zip(order, order[1:], strict=False) if b < a]
    assert order[0] == 29 and order[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(order, order[1:], strict=False))
    # every step below the top segment is taken 3 times; the top segment's once
    assert sorted(downs + [29]) == sorted([*range(20, 30), *list(range(0, 20)) * 3])


def _run_chain(sched, generator, x, original, mask, process):
    """A RePaint sampling loop as diffusers' RePaintPipeline runs it: step where the list goes
    down (model at t), undo_step(x, t_last) where it goes up; ``process`` gives the model."""
    t_last = int(sched.timesteps[0]) + 1
    for t in sched.timesteps.tolist():
        if t < t_last:
            out = _fake_model(process, x, t)
            x = sched.step(out, t, x, original, mask, generator=generator).prev_sample
        else:
            x = sched.undo_step(x, t_last, generator=generator)
        t_last = t
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_whole_chain_with_jumps_matches_diffusers_at_n_equal_T(diffusers, eta):
    """At n = T every undo is one training step, where diffusers' undo is exact: the whole
    chain, jumps included, then matches from the same generator."""
    T = 100
    ours = RePaintScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, eta=eta)
    theirs = _theirs(diffusers, num_train_timesteps=T, eta=eta)
    ours.set_timesteps(T, 10, 3)
    theirs.set_timesteps(T, 10, 3)
    g = torch.Generator().manual_seed(3)
    x, original = torch.randn(SHAPE, generator=g), torch.rand(SHAPE, generator=g) * 2 - 1
    mask = (torch.rand(SHAPE, generator=g) > 0.5).float()
    a = _run_chain(ours, torch.Generator().manual_seed(0), x, original, mask, ours)
    b = _run_chain(theirs, torch.Generator().manual_seed(0), x, original, mask, ours)
    worst = _max_diff(a, b)
    print(f"\nRePaint chain eta={eta}, n=T={T}: max diff {worst:.2e}")
    assert worst <= 1e-5
    assert _max_diff(a * mask, original * mask) <= 1e-6  # the known pixels end as given


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n", [50, 250])
def test_each_step_matches_diffusers(diffusers, n, eta):
    if tuple(int(part) for part in diffusers.__version__.split(".")[:2]) < (0, 33):
        pytest.skip("diffusers < 0.33 scales the known part's noise by 1 - alpha_bar instead of "
                    "its square root (RePaint's Algorithm 1, line 5, corrected in 0.33); ours "
                    "is the corrected step")
    ours, theirs = RePaintScheduler(eta=eta), _theirs(diffusers, eta=eta)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    g = torch.Generator().manual_seed(1)
    original, mask = torch.rand(SHAPE, generator=g) * 2 - 1, (torch.rand(SHAPE) > 0.5).float()
    worst = 0.0
    for t in sorted(set(ours.timesteps.tolist()), reverse=True):
        x = torch.randn(SHAPE, generator=g)
        out = _fake_model(ours, x, t)
        a = ours.step(out, t, x, original, mask, generator=torch.Generator().manual_seed(t))
        b = theirs.step(out, t, x, original, mask, generator=torch.Generator().manual_seed(t))
        worst = max(worst, _max_diff(a.prev_sample, b.prev_sample),
                    _max_diff(a.pred_original_sample, b.pred_original_sample))
    print(f"\nRePaint step n={n} eta={eta}: max diff {worst:.2e}")
    assert worst <= 1e-5


def test_all_known_pixels_make_the_step_the_forward_process():
    ours = RePaintScheduler(beta_schedule="cosine", timestep_spacing="trailing")
    ours.set_timesteps(20)
    original = torch.rand(SHAPE) * 2 - 1
    t = int(ours.timesteps[3])
    prev = ours.previous_timestep(t)
    g = torch.Generator().manual_seed(0)
    x = ours.step(torch.randn(SHAPE), t, torch.randn(SHAPE), original, torch.ones(SHAPE),
                  generator=torch.Generator().manual_seed(5)).prev_sample
    expected = ours.add_noise(original, torch.randn(SHAPE, generator=g.manual_seed(5)), prev)
    assert _max_diff(x, expected) <= 1e-6


def test_unknown_pixels_take_the_ddim_step():
    ours, ddim = RePaintScheduler(eta=0.0), DDIMScheduler(eta=0.0)
    for s in (ours, ddim):
        s.set_timesteps(25)
    x = torch.randn(SHAPE)
    for t in (960, 480, 0):
        out = _fake_model(ours, x, t)
        a = ours.step(out, t, x, torch.zeros(SHAPE), torch.zeros(SHAPE)).prev_sample
        assert _max_diff(a, ddim.step(out, t, x).prev_sample) <= 1e-6


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_undo_step_lands_on_the_forward_marginal(spacing):
    """From x_prev ~ q(x_prev | x_0), undo_step gives x_t ~ q(x_t | x_0): mean sqrt(a_t) x_0 and
    variance 1 - a_t, for every grid step including the one from the clean image."""
    sched = RePaintScheduler(timestep_spacing=spacing)
    sched.set_timesteps(10, 3, 2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    for t in sched.timesteps.unique().tolist():
        prev = sched.previous_timestep(t)
        a_prev = sched.alpha_bar(prev)
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * torch.randn(
            x0.shape, generator=g, dtype=torch.float64)
        x_t = sched.undo_step(x_prev, t, generator=g)
        a_t = sched.alpha_bar(t)
        assert abs(x_t.mean().item() - math.sqrt(a_t) * 0.7) < 4 * math.sqrt(1 / 20000)
        assert abs(x_t.var().item() / (1 - a_t) - 1) < 0.05


def test_bad_jump_arguments_are_one_sentence():
    sched = RePaintScheduler()
    with pytest.raises(ValueError, match=r"^jump_length must be an integer >= 1; got 0\.$"):
        sched.set_timesteps(10, jump_length=0)
    with pytest.raises(ValueError, match=r"^jump_n_sample must be an integer >= 1; got 1\.5"):
        sched.set_timesteps(10, jump_n_sample=1.5)


def test_the_last_step_must_land_on_the_clean_image():
    with pytest.raises(ValueError, match=r"^RePaintScheduler needs set_alpha_to_one=True"):
        RePaintScheduler(set_alpha_to_one=False)
    over = RePaintScheduler.over(DDIMScheduler(set_alpha_to_one=False), set_alpha_to_one=True)
    assert over.alpha_bar(-1) == 1.0
