"""The ``sampler`` config group: one file per registered sampler stating its options as the
registry presets them, the same spec for sample, evaluate and the trainer, and any trained run
sampled by any of them with its own noise schedule and prediction type."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.sample import sample
from diffusion.config.build import build_trainer_config
from diffusion.config.paths import CONF_DIR
from diffusion.config.sampler import RUN_SAMPLER, resolve_run_sampler, training_sampler
from diffusion.errors import ConfigError
from diffusion.processes import DiscreteProcess
from diffusion.runs.records import entry_key
from diffusion.sampling.checks import SAMPLERS
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import (
    GENERIC_KEYS,
    SamplerSpec,
    default_options,
    sampler_options,
)
from diffusion.schedulers import CONTINUOUS_SAMPLERS, DDPMScheduler, NoiseScheduler
from hydra_utils import compose_config
from test_train import run_training

THRESHOLDING = {"thresholding": False, "dynamic_thresholding_ratio": 0.995,
                "sample_max_value": 1.0}  # what every sampler's file states

FILES = sorted(p for p in (CONF_DIR / "sampler").glob("*.yaml") if p.stem != RUN_SAMPLER)
DISCRETE = [p for p in FILES if p.stem in NoiseScheduler.SAMPLERS]
CONTINUOUS = [p for p in FILES if p.stem in CONTINUOUS_SAMPLERS]


def test_every_registered_sampler_has_one_file_and_no_file_names_another():
    assert sorted(p.stem for p in FILES) == sorted(SAMPLERS)
    assert sorted(p.stem for p in CONTINUOUS) == [
        "ald", "corrupt", "edm", "edm_dpmpp_2m", "edm_euler", "edm_euler_a", "em", "flow_dpmpp_2m",
        "flow_euler", "flow_heun",
        "flow_midpoint", "ode", "pc", "rk45"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_states_every_option_as_the_registry_presets_it(path):
    node = OmegaConf.to_container(OmegaConf.load(path))
    assert node["name"] == path.stem
    assert set(node) == {*GENERIC_KEYS, *sampler_options(path.stem)}
    spec = SamplerSpec.from_config(node)
    assert spec.options == default_options(path.stem) and spec.changed_options() == {}
    # the continuous-time samplers' times are evenly spaced: no spacing to choose
    assert spec.timestep_spacing == ("trailing" if path in DISCRETE else None)
    spec.check(1000)


@pytest.mark.parametrize("path", CONTINUOUS, ids=lambda p: p.stem)
def test_continuous_sampler_reads_a_ddpm_run_in_continuous_time(path):
    train = DDPMScheduler(beta_schedule="cosine", prediction_type="v_prediction")
    spec = SamplerSpec.from_config(OmegaConf.load(path))
    sched = spec.build(train)
    assert type(sched) is CONTINUOUS_SAMPLERS[spec.name]
    assert isinstance(sched.process, DiscreteProcess)
    assert torch.equal(sched.process.alphas_cumprod, train.alphas_cumprod.double())
    assert sched.process.prediction_type == "v_prediction"
    assert {k: sched.config[k] for k in spec.options} == spec.options
    with pytest.raises(ValueError, match=rf"^sampler.timestep_spacing does not apply to "
                                         rf"sampler={path.stem}, whose times are evenly spaced "
                                         rf"from 1 to t_min: set it to null.$"):
        SamplerSpec.from_config({**OmegaConf.load(path), "timestep_spacing": "leading"})


@pytest.mark.parametrize("path", DISCRETE, ids=lambda p: p.stem)
def test_built_sampler_keeps_the_training_noise_process(path):
    train = DDPMScheduler(beta_schedule="cosine", prediction_type="v_prediction",
                          clip_sample=False, timestep_spacing="leading")
    spec = SamplerSpec.from_config(OmegaConf.load(path))
    sched = spec.build(train)
    assert type(sched) is NoiseScheduler.SAMPLERS[spec.name]
    for key in ("beta_schedule", "prediction_type", "clip_sample", "num_train_timesteps"):
        assert sched.config[key] == train.config[key], key
    assert torch.equal(sched.alphas_cumprod, train.alphas_cumprod)
    assert sched.config["timestep_spacing"] == "trailing"  # the spec's, not the run's
    assert {k: sched.config[k] for k in spec.options} == spec.options
    kept = SamplerSpec(spec.name, spec.steps, None, spec.options).build(train)
    assert kept.config["timestep_spacing"] == "leading"  # null: the training scheduler's


def test_changed_options_reach_the_scheduler_and_are_named():
    cfg = compose_config(["run=x", "sampler=dpmpp_2m", "sampler.steps=[10,20]",
                          "sampler.use_karras_sigmas=true"], config_name="evaluate")
    spec = SamplerSpec.from_config(cfg.sampler)
    assert spec.steps == [10, 20] and spec.step_counts(1000) == [10, 20]
    assert spec.changed_options() == {"use_karras_sigmas": True}
    assert spec.build(DDPMScheduler()).config["use_karras_sigmas"] is True
    assert SamplerSpec.from_config({"name": "ddpm", "steps": None}).step_counts(500) == [500]
    with pytest.raises(ValueError, match=r"^sampler.eta is not an option of sampler=euler: use "
                                         r"one of name, steps, timestep_spacing, "
                                         r"dynamic_thresholding_ratio, sample_max_value, "
                                         r"thresholding, use_karras_sigmas.$"):
        SamplerSpec.from_config({"name": "euler", "steps": 5, "eta": 0.5})
    with pytest.raises(ValueError, match=r"^sampler.solver_order must be one of 1, 2, 3; got 4.$"):
        SamplerSpec.from_config({"name": "dpmpp_2m", "steps": 5, "solver_order": 4}).check(1000)


def test_an_evaluation_with_changed_options_is_its_own_eval_json_entry():
    entry = {"sampler": "dpmpp_2m", "steps": 10, "n": 100, "eta": 0.0,
             "timestep_spacing": "trailing", "batch_size": 50, "seed": 0,
             "checkpoint": "step_00000004.pt", "step": 4, "feature_id": "f", "reference_n": 10}
    karras = {**entry, "sampler_options": {"use_karras_sigmas": True}}
    assert entry_key(karras) == entry_key(entry).replace(
        "timestep_spacing=trailing", "timestep_spacing=trailing "
        "sampler_options={'use_karras_sigmas': True}")


def test_one_spec_for_sample_evaluate_and_training():
    sample_cfg = compose_config(["run=x", "sampler=dpmpp_2m", "sampler.steps=10"],
                                config_name="sample")
    assert SamplerSpec.from_config(sample_cfg.sampler).steps == 10
    assert compose_config(["run=x", "sampler=ddim"], config_name="sample").sampler.steps == 50
    evaluate_cfg = compose_config(["run=x", "sampler=heun", "sampler.steps=[10,20]"],
                                  config_name="evaluate")
    assert SamplerSpec.from_config(evaluate_cfg.sampler).step_counts(1000) == [10, 20]
    train_cfg = compose_config(["sampler=euler_a", "sampler.steps=25"])
    assert training_sampler(train_cfg) == SamplerSpec("euler_a", 25, "trailing", THRESHOLDING)
    assert "sampler" not in build_trainer_config(train_cfg).__dict__


def test_a_run_folder_from_before_the_group_keeps_its_grid_sampler():
    """Its config.yaml states the grids' sampler as trainer.sampler/sample_steps/
    sample_spacing and has no sampler node: those are read, and not passed to the trainer."""
    cfg = compose_config([])
    container = OmegaConf.to_container(cfg)
    del container["sampler"]
    container["trainer"].update(sampler="heun", sample_steps=7, sample_spacing="leading")
    old = OmegaConf.create(container)
    assert training_sampler(old) == SamplerSpec("heun", 7, "leading", {})
    assert build_trainer_config(old).sample_n == cfg.trainer.sample_n


def test_any_trained_run_samples_with_every_sampler(tmp_path, tiny_mnist_root):
    """A cosine, v-prediction run (unclipped: DDIM clips x_0 but not the noise it uses)
    sampled through diffusion.sample with each group option:
    the sampler runs over the run's own schedule, and Euler in sigma space, which is the
    DDIM update, gives DDIM's images."""
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler.beta_schedule=cosine",
                          "scheduler.prediction_type=v_prediction", "scheduler.clip_sample=false",
                          "trainer.sample_every=0",
                          "trainer.val_every=0")
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    images = {}
    for path in FILES:
        steps = "sampler.steps=1000" if path.stem == "rk45" else "sampler.steps=3"  # a cap
        cfg = compose_config([f"run={run}", f"sampler={path.stem}", steps, "n=3",
                              "device=cpu", "save_tensors=true"], config_name="sample")
        written = sample(cfg)
        images[path.stem] = torch.load(written["tensors"], weights_only=True)
        assert images[path.stem].shape == (3, 1, 28, 28)
        built = SamplerSpec.from_config(cfg.sampler).build(pipe.scheduler)
        if path in CONTINUOUS:
            assert torch.equal(built.process.alphas_cumprod,
                               pipe.scheduler.alphas_cumprod.double())
            assert built.process.prediction_type == "v_prediction"
            continue
        assert (built.config["beta_schedule"], built.config["prediction_type"]) == (
            "cosine", "v_prediction")
    torch.testing.assert_close(images["euler"], images["ddim"], atol=1e-4, rtol=0)
    assert not torch.allclose(images["ddpm"], images["ddim"], atol=1e-2)


def test_sample_and_evaluate_default_to_the_runs_own_sampler_and_edit_to_ddim():
    assert OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sampler" / "run.yaml")) == {
        "name": RUN_SAMPLER, "steps": None}
    for command in ("sample", "evaluate"):
        assert compose_config(["run=x"], config_name=command).sampler.name == RUN_SAMPLER
    assert compose_config(["run=x"], config_name="edit").sampler.name == "ddim"


def test_sampler_run_reads_the_run_config_and_keeps_only_the_steps_given():
    run_cfg = OmegaConf.create({"sampler": {"name": "flow_midpoint", "steps": 5}})
    cfg = compose_config(["run=x"], config_name="sample")
    resolve_run_sampler(cfg, run_cfg)
    assert OmegaConf.to_container(cfg.sampler) == {"name": "flow_midpoint", "steps": 5}
    cfg = compose_config(["run=x", "sampler.steps=[3,7]"], config_name="evaluate")
    resolve_run_sampler(cfg, run_cfg)
    assert SamplerSpec.from_config(cfg.sampler).step_counts(1000) == [3, 7]
    named = compose_config(["run=x", "sampler=heun", "sampler.steps=4"], config_name="sample")
    resolve_run_sampler(named, run_cfg)  # a named sampler is left as it is
    assert (named.sampler.name, named.sampler.steps) == ("heun", 4)
    # a run folder from before the group: its trainer keys
    old = OmegaConf.create({"trainer": {"sampler": "ddpm", "sample_steps": 20}})
    cfg = compose_config(["run=x"], config_name="sample")
    resolve_run_sampler(cfg, old)
    assert (cfg.sampler.name, cfg.sampler.steps) == ("ddpm", 20)
    cfg = compose_config(["run=x", "+sampler.eta=0.5"], config_name="sample")
    with pytest.raises(ConfigError, match=r"^sampler.eta is not an option of sampler=run \(the "
                                          r"run's own sampler, flow_midpoint, whose steps alone "
                                          r"change here\): name the sampler to set it, e.g. "
                                          r"sampler=flow_midpoint sampler.eta=<value>.$"):
        resolve_run_sampler(cfg, run_cfg)
    with pytest.raises(ConfigError, match=r"^sampler=run is a trained run's own sampler"):
        training_sampler(compose_config(["sampler=run"]))


def test_a_run_samples_with_its_own_sampler_by_default(tmp_path, tiny_mnist_root):
    run, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                          "scheduler=flow", "objective=flow", "sampler=flow_midpoint",
                          "sampler.steps=2", "trainer.sample_every=0", "trainer.val_every=0")
    written = sample(compose_config([f"run={run}", "n=2", "device=cpu"], config_name="sample"))
    assert written["grid"].name == "flow_midpoint-2_n2_seed0.png"
    written = sample(compose_config([f"run={run}", "n=2", "device=cpu", "sampler.steps=3"],
                                    config_name="sample"))
    assert written["grid"].name == "flow_midpoint-3_n2_seed0.png"
