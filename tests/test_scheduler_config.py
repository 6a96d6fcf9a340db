"""Schedulers saved, loaded and swapped as diffusers users do: ``save_pretrained`` writes a
``scheduler_config.json`` that diffusers' class of the same name loads into the same noise
process, ours loads what diffusers saved, and ``from_config`` swaps between our classes and
diffusers' either way."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion.schedulers import DDPMScheduler, NoiseScheduler

diffusers = pytest.importorskip("diffusers")

SCHEDULES = ["linear", "scaled_linear", "cosine"]


def _same_process(ours, theirs, steps: int = 10) -> None:
    assert torch.allclose(ours.alphas_cumprod.double(), theirs.alphas_cumprod.double(),
                          rtol=1e-6, atol=1e-9)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert [float(t) for t in ours.timesteps] == pytest.approx(
        [float(t) for t in theirs.timesteps], abs=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", sorted(NoiseScheduler.SAMPLERS))
def test_a_saved_scheduler_loads_in_diffusers_and_back(tmp_path, name, schedule):
    ours = NoiseScheduler.SAMPLERS[name].over(
        DDPMScheduler(beta_schedule=schedule, timestep_spacing="trailing"))
    path = ours.save_pretrained(tmp_path / "scheduler")
    saved = json.loads(path.read_text())
    assert saved["_class_name"] == type(ours).__name__
    theirs = getattr(diffusers, type(ours).__name__).from_pretrained(tmp_path / "scheduler")
    _same_process(type(ours).from_pretrained(tmp_path / "scheduler"), theirs)
    _same_process(NoiseScheduler.SAMPLERS[name].over(
        DDPMScheduler(beta_schedule=schedule, timestep_spacing="trailing")), theirs)
    theirs.save_pretrained(tmp_path / "theirs")  # and what diffusers saves, we load
    _same_process(type(ours).from_pretrained(tmp_path / "theirs"),
                  getattr(diffusers, type(ours).__name__).from_pretrained(tmp_path / "theirs"))


def test_from_config_swaps_between_our_classes_and_diffusers(tmp_path):
    from diffusion.schedulers import DDIMScheduler, EulerDiscreteScheduler

    theirs = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    ours = EulerDiscreteScheduler.from_config(theirs.config)  # diffusers' config, our class
    assert ours.config["beta_schedule"] == "cosine"
    back = diffusers.EulerDiscreteScheduler.from_config(ours.diffusers_config())
    _same_process(ours, back)
    ddim = DDIMScheduler.from_config(ours.config)
    assert EulerDiscreteScheduler in ddim.compatibles and DDIMScheduler not in ddim.compatibles


def test_a_diffusers_option_that_would_matter_is_refused():
    config = {**diffusers.DDPMScheduler().config, "timestep_type": "continuous"}
    with pytest.raises(ValueError, match=r"^DDPMScheduler has no option timestep_type \(got "
                                         r"'continuous'\); drop it, or leave it at diffusers' "
                                         r"default"):
        DDPMScheduler.from_config(config)
    thresholded = {**diffusers.DDPMScheduler().config, "thresholding": True}
    assert DDPMScheduler.from_config(thresholded).thresholding  # supported now
    with pytest.raises(FileNotFoundError, match="No scheduler_config.json in"):
        DDPMScheduler.from_pretrained("/nonexistent-folder")


@pytest.mark.parametrize("name", sorted(NoiseScheduler.SAMPLERS))
def test_diffusers_loads_our_saved_config_without_a_warning(tmp_path, name, caplog):
    """Options diffusers' class lacks (DDIM's eta, Euler's clip_sample) are left out of the
    file at their defaults, so diffusers has nothing to ignore; at another value they are
    written, and diffusers says it ignores them."""
    ours = NoiseScheduler.SAMPLERS[name].over(DDPMScheduler(clip_sample=False))
    ours.save_pretrained(tmp_path)
    klass = getattr(diffusers, type(ours).__name__)
    with caplog.at_level("WARNING"):
        klass.from_pretrained(tmp_path)
    assert "are not expected and will be ignored" not in caplog.text
    back = type(ours).from_pretrained(tmp_path)  # and ours reads it back, ends spelt out
    assert torch.equal(back.betas, ours.betas)
    skip = {"beta_start", "beta_end"}
    assert {k: v for k, v in back.config.items() if k not in skip} == \
        {k: v for k, v in ours.config.items() if k not in skip}
