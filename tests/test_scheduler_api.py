"""The reverse step's arguments as diffusers users pass them: what diffusers takes fourth is
taken fourth here too (DDIM's ``eta``, DDPM's, DPM-Solver's and Euler ancestral's
``generator``) or refused (Euler's ``s_churn``, Heun's ``return_dict``), never silently put in
another argument's place; ``return_dict=False`` gives a tuple."""

from __future__ import annotations

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, DDPMScheduler, NoiseScheduler

SHAPE = (2, 1, 4, 4)


def _ready(name: str) -> NoiseScheduler:
    sampler = NoiseScheduler.SAMPLERS[name].over(DDPMScheduler())
    sampler.set_timesteps(10)
    return sampler


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def test_ddim_takes_eta_fourth_as_diffusers_does():
    out, x = _inputs()
    sched = _ready("ddim")
    t = sched.timesteps[3]
    positional = sched.step(out, t, x, 0.5, generator=torch.Generator().manual_seed(1))
    keyword = sched.step(out, t, x, eta=0.5, generator=torch.Generator().manual_seed(1))
    plain = sched.step(out, t, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(positional.prev_sample, keyword.prev_sample)
    assert not torch.equal(positional.prev_sample, plain.prev_sample)  # eta reached the step
    with pytest.raises(TypeError):  # what follows eta is keyword-only
        sched.step(out, t, x, 0.5, torch.Generator())
    assert isinstance(DDIMScheduler.over(DDPMScheduler()), DDIMScheduler)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_a_fourth_argument_that_diffusers_reads_otherwise_is_refused(name):
    out, x = _inputs()
    sched = _ready(name)
    with pytest.raises(TypeError):  # diffusers: s_churn (Euler), return_dict (Heun)
        sched.step(out, sched.timesteps[0], x, 0.5)


@pytest.mark.parametrize("name", ["ddpm", "dpmpp_2m_sde", "euler_a"])
def test_a_generator_fourth_draws_the_noise_as_diffusers_does(name):
    out, x = _inputs()
    runs = []
    for keyword in (False, True):
        sched = _ready(name)
        t = sched.timesteps[0]
        g = torch.Generator().manual_seed(3)
        step = (sched.step(out, t, x, generator=g) if keyword else sched.step(out, t, x, g))
        runs.append(step.prev_sample)
    assert torch.equal(*runs)


@pytest.mark.parametrize("name", sorted(NoiseScheduler.SAMPLERS))
def test_return_dict_false_gives_the_tuple(name):
    out, x = _inputs()
    results = []
    for return_dict in (True, False):
        sched = _ready(name)
        step = sched.step(out, sched.timesteps[0], x, generator=torch.Generator().manual_seed(2),
                          return_dict=return_dict)
        results.append(step)
    full, plain = results
    assert isinstance(plain, tuple) and len(plain) == 2
    assert torch.equal(plain[0], full.prev_sample) and torch.equal(plain[1],
                                                                  full.pred_original_sample)
