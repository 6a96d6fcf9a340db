"""The training objective: loss weights against their formulas and diffusers, the weights'
consistency across prediction types, t-sampling, offset noise, and the config group."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.config.build import build_objective, build_scheduler
from diffusion.schedulers import DDPMScheduler
from diffusion.training.loggers import read_metrics
from diffusion.training.objectives import Objective
from hydra_utils import compose_config, debug_overrides
from test_train import run_training

TYPES = ("epsilon", "sample", "v_prediction")


def _snr(sched) -> torch.Tensor:
    a = sched.alphas_cumprod.double()
    return a / (1 - a)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction_type", TYPES)
def test_weights_follow_their_formulas(schedule, prediction_type):
    sched = DDPMScheduler(beta_schedule=schedule, prediction_type=prediction_type)
    snr = _snr(sched)
    five = torch.full_like(snr, 5.0)
    min_snr = {"epsilon": torch.minimum(snr, five) / snr,
               "sample": torch.minimum(snr, five),
               "v_prediction": torch.minimum(snr, five) / (snr + 1)}[prediction_type]
    # P2 with k = 1, gamma = 0.5 on the epsilon error, carried to the output's error
    ratio = {"epsilon": 1.0, "sample": snr, "v_prediction": snr / (snr + 1)}[prediction_type]
    p2 = ratio / (1 + snr) ** 0.5
    torch.testing.assert_close(Objective(sched, "min_snr").weight_table(), min_snr)
    torch.testing.assert_close(Objective(sched, "p2", p2_gamma=0.5).weight_table(), p2)
    assert torch.equal(Objective(sched).weight_table(), torch.ones(1000, dtype=torch.float64))
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(Objective(sched, "min_snr").weights(t), min_snr[t].float())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_training_scripts(prediction_type):
    training_utils = pytest.importorskip("diffusers.training_utils")
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(prediction_type=prediction_type)
    t = torch.arange(1000)
    snr = training_utils.compute_snr(theirs, t)
    # diffusers' train_text_to_image.py, snr_gamma = 5
    weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    weights = weights / (snr if prediction_type == "epsilon" else snr + 1)
    ours = Objective(DDPMScheduler(prediction_type=prediction_type), "min_snr").weights(t)
    # diffusers keeps alphas_cumprod in float32: 1 - a_t near t = 0 loses digits there
    # (measured: 1.7e-4 relative at t = 0, below 1e-5 from t = 40 on)
    torch.testing.assert_close(ours, weights.float(), rtol=3e-4, atol=0)
    torch.testing.assert_close(ours[40:], weights[40:].float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("weighting", ["none", "min_snr", "p2"])
def test_one_error_costs_the_same_in_every_parameterisation(weighting):
    """A model that is off by d_eps in epsilon is off by d_x0 = -d_eps / sqrt(SNR) in x_0 and
    by d_v = d_eps / sqrt(a) in v: its weighted loss is the same whichever it outputs
    (except 'none', whose plain MSEs differ by those factors)."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(6, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 3, 100, 400, 800, 999])
    eps_hat = noise + 0.1 * torch.randn(6, 1, 8, 8, generator=gen)
    base = DDPMScheduler(beta_schedule="cosine")
    x_t = base.add_noise(x0, noise, t)
    losses = {}
    for prediction_type in TYPES:
        sched = DDPMScheduler(beta_schedule="cosine", prediction_type=prediction_type)
        eps_sched = DDPMScheduler(beta_schedule="cosine")
        output = {"epsilon": eps_hat,
                  "sample": eps_sched.pred_original_sample(eps_hat, t, x_t),
                  "v_prediction": eps_sched.pred_velocity(eps_hat, t, x_t)}[prediction_type]
        target = sched.training_target(x0, noise, t)
        losses[prediction_type] = Objective(sched, weighting).loss(output.double(),
                                                                   target.double(), t)
    if weighting == "none":
        assert not torch.isclose(losses["epsilon"], losses["sample"], rtol=0.1)
    else:
        for prediction_type in ("sample", "v_prediction"):
            torch.testing.assert_close(losses[prediction_type], losses["epsilon"], rtol=1e-4,
                                       atol=0)


def test_zero_terminal_snr_weights_stay_finite():
    for prediction_type in ("sample", "v_prediction"):
        sched = DDPMScheduler(prediction_type=prediction_type, rescale_betas_zero_snr=True)
        table = Objective(sched, "min_snr").weight_table()
        assert torch.isfinite(table).all() and table[-1] == 0  # SNR 0: no x_0 to learn


def test_stratified_timesteps_cover_every_slice():
    objective = Objective(DDPMScheduler(), t_sampling="stratified")
    gen = torch.Generator().manual_seed(0)
    t = objective.sample_timesteps(1000, torch.device("cpu"), gen)
    assert torch.equal(t.sort().values, torch.arange(1000))  # one per slice of width 1
    t = objective.sample_timesteps(10, torch.device("cpu"), gen)
    assert torch.equal((t // 100).sort().values, torch.arange(10))
    assert not torch.equal(t, t.sort().values)  # shuffled, not in slice order
    uniform = Objective(DDPMScheduler()).sample_timesteps(10, torch.device("cpu"), gen)
    assert uniform.min() >= 0 and uniform.max() < 1000


def test_offset_noise_adds_a_per_channel_constant():
    shape = (4000, 3, 8, 8)
    plain = Objective(DDPMScheduler())
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    # without offset the draw is exactly torch.randn's: default runs are unchanged
    assert torch.equal(plain.sample_noise(shape, torch.device("cpu"), gen_a),
                       torch.randn(shape, generator=gen_b))
    noise = Objective(DDPMScheduler(), offset_noise=0.5).sample_noise(
        shape, torch.device("cpu"), torch.Generator().manual_seed(1))
    means = noise.mean(dim=(2, 3))
    # the spatial mean of 64 unit normals has variance 1/64; the offset adds 0.5^2
    assert means.var().item() == pytest.approx(0.25 + 1 / 64, rel=0.05)
    assert noise.var().item() == pytest.approx(1.25, rel=0.02)


def test_the_group_sets_the_prediction_type_the_sampler_reads(tiny_mnist_root):
    cfg = compose_config(debug_overrides(tiny_mnist_root, "objective=v_zero_snr"))
    assert cfg.scheduler.prediction_type == "v_prediction"
    assert cfg.scheduler.rescale_betas_zero_snr and cfg.sampler.timestep_spacing == "trailing"
    objective = build_objective(cfg, build_scheduler(cfg))
    assert objective.prediction_type == "v_prediction" and objective.weighting == "none"
    cfg = compose_config(debug_overrides(tiny_mnist_root, "objective=x0_minsnr",
                                         "objective.snr_gamma=2", "objective.loss=l1"))
    objective = build_objective(cfg, build_scheduler(cfg))
    assert (objective.prediction_type, objective.weighting, objective.snr_gamma,
            objective.loss_kind) == ("sample", "min_snr", 2.0, "l1")


def test_an_old_run_folder_without_the_group_keeps_its_loss():
    cfg = OmegaConf.create({"scheduler": {"_target_": "diffusion.schedulers.DDPMScheduler"},
                            "trainer": {"loss": "huber", "huber_delta": 0.3}})
    objective = build_objective(cfg, build_scheduler(cfg))
    assert (objective.loss_kind, objective.huber_delta, objective.weighting) == (
        "huber", 0.3, "none")


@pytest.mark.parametrize("objective", ["v_minsnr", "eps_p2"])
def test_training_with_an_objective_learns(tmp_path, tiny_mnist_root, objective):
    """Twenty steps: the weighted loss falls, and the run records its objective."""
    run_dir, _ = run_training(tmp_path, tiny_mnist_root, f"objective={objective}",
                              "model=basic", "model.base_channels=8", "trainer.max_steps=20",
                              "trainer.log_every=5", "optimizer.lr=3e-3",
                              "lr_scheduler.warmup_steps=1", "objective.t_sampling=stratified")
    losses = [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
              if "train/loss" in r]
    assert len(losses) >= 4 and losses[-1] < 0.8 * losses[0], losses
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.objective.weighting == {"v_minsnr": "min_snr", "eps_p2": "p2"}[objective]
