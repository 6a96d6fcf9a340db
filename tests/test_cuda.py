"""The trainer and the pipeline on a GPU: mixed precision against fp32 on real MNIST, exact
resume, compiled and CUDA-graph paths against eager, channels_last, EMA, the periodic FID
(the sampling loops' synchronisations are tested in test_sampler_sync.py). Skipped where no
GPU is found.

``DIFFUSION_TEST_DEVICE=cpu`` runs the device-agnostic cases on the CPU, to check the tests
themselves on a machine without a GPU.
"""
from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from diffusion.data import MNISTDataset
from diffusion.models import AttentionUNet, BasicUNet
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDPMScheduler
from diffusion.training import EMA, TrainerConfig
from diffusion.training.loggers import read_metrics
from diffusion.training.trainer import Trainer
from test_train import assert_same_state, run_training, straight_and_resumed

DEVICE = os.environ.get("DIFFUSION_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs CUDA (DIFFUSION_TEST_DEVICE=cpu checks the tests)")
ON_DEVICE = (f"trainer.device={DEVICE}",)
SMALL_ATTN = ("model=unet_attn", "model.base_channels=16", "model.norm_groups=8",
              "model.num_res_blocks=1", "model.attention_resolutions=[7]", "model.dropout=0.0")


def _mnist_trainer(root, precision: str, tmp_path) -> Trainer:
    """The attention UNet (16 channels) on the first 2,048 real MNIST training images."""
    data = MNISTDataset("train", root=root)  # download=true unpacks the archives
    images = torch.stack([data[i][0] for i in range(2048)])
    labels = torch.zeros(2048, dtype=torch.long)
    torch.manual_seed(0)
    model = AttentionUNet(in_channels=1, image_size=28, base_channels=16, num_res_blocks=1,
                          attention_resolutions=[7], norm_groups=8, dropout=0.0)
    cfg = TrainerConfig(device=DEVICE, precision=precision, ema_decay=0.99, progress=False)
    return Trainer(model, DDPMScheduler(), functools.partial(torch.optim.AdamW, lr=1e-3),
                   torch.utils.data.TensorDataset(images, labels), cfg, batch_size=128,
                   run_dir=tmp_path / precision, seed=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fifty_mixed_precision_steps_on_mnist_track_fp32(tmp_path, shared_data_root, precision):
    """Same weights, batches, timesteps and noise: after 50 AdamW steps the mixed-precision
    loss curve stays finite and within 5% of fp32's (mean of the last ten losses), and the
    weights end closer to fp32's than three quarters of fp32's own change (Adam normalises
    each update, so rounding moves small-gradient weights by whole steps; measured: bf16 0.26
    on a CPU, bf16 0.53 and fp16 0.50 on an H200 with torch 2.11)."""
    curves, weights = {}, {}
    for p in ("fp32", precision):
        trainer = _mnist_trainer(shared_data_root, p, tmp_path)
        start = torch.cat([q.detach().flatten() for q in trainer.model.parameters()])
        batches = trainer.batches(0)
        curves[p] = torch.stack([trainer.train_step(batches)[0] for _ in range(50)]).cpu()
        end = torch.cat([q.detach().flatten() for q in trainer.model.parameters()])
        weights[p] = (start, end)
        assert trainer.step + trainer.skipped_steps == 50
    assert torch.isfinite(curves[precision]).all()
    assert curves["fp32"][-10:].mean() < 0.5 * curves["fp32"][:5].mean()  # it did learn
    ref, got = curves["fp32"][-10:].mean(), curves[precision][-10:].mean()
    assert abs(got - ref) / ref < 0.05, (got, ref)
    (s32, e32), (_, e) = weights["fp32"], weights[precision]
    assert ((e - e32).norm() / (e32 - s32).norm()).item() < 0.75


def test_skipped_fp16_step_on_the_device_advances_nothing(tmp_path):
    """An inf gradient under fp16: the GradScaler skips the update and halves its scale,
    and neither the step nor the EMA move."""
    cfg = TrainerConfig(device=DEVICE, precision="fp16", progress=False)
    torch.manual_seed(0)
    model = BasicUNet(image_size=16, base_channels=8)
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    trainer = Trainer(model, DDPMScheduler(), functools.partial(torch.optim.AdamW, lr=1e-3),
                      torch.utils.data.TensorDataset(images, torch.zeros(8, dtype=torch.long)),
                      cfg, batch_size=8, run_dir=tmp_path)
    batches = itertools.repeat((images, torch.zeros(8, dtype=torch.long)))
    trainer.train_step(batches)
    flat = [p.detach().clone() for p in trainer.model.parameters()]
    scale = trainer.scaler.get_scale()
    hook = next(trainer.model.parameters()).register_hook(
        lambda grad: torch.full_like(grad, float("inf")))
    loss, _, _ = trainer.train_step(batches)
    hook.remove()
    assert torch.isfinite(loss)
    assert (trainer.step, trainer.skipped_steps, trainer.ema.num_updates) == (1, 1, 1)
    assert all(torch.equal(a, b) for a, b in zip(flat, trainer.model.parameters(), strict=True))
    assert trainer.scaler.get_scale() == scale / 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_on_the_device_is_exact(tmp_path, tiny_mnist_root, precision):
    """Stop at step 3, resume to 6 with trainer.deterministic=true: the same weights, EMA and
    Adam state as a straight run, bit for bit (on an H200 without it, the attention
    backward's kernels made the resumed weights differ in the last bits)."""
    args = (*SMALL_ATTN, *ON_DEVICE, f"trainer.precision={precision}", "model.dropout=0.1",
            "trainer.deterministic=true", "trainer.ckpt_every=3", "trainer.keep_last=0")
    try:
        straight, resumed = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    finally:
        torch.use_deterministic_algorithms(False)
    assert_same_state(straight, resumed)


def _final_weights(run_dir):
    return torch.load(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1],
                      weights_only=True)["model"]


@pytest.mark.parametrize("flag", ["trainer.compile=true", "trainer.channels_last=true"])
def test_compiled_and_channels_last_training_match_eager(tmp_path, tiny_mnist_root, flag):
    """Three fp32 steps of the attention UNet: compiled or channels_last weights within
    1e-4 of eager (kernels differ, so bits may not)."""
    common = (*SMALL_ATTN, *ON_DEVICE, "trainer.precision=fp32", "trainer.sample_every=0",
              "trainer.val_every=0", "trainer.max_steps=3", "trainer.ckpt_every=3")
    eager, _ = run_training(tmp_path, tiny_mnist_root, *common, name="eager")
    other, summary = run_training(tmp_path, tiny_mnist_root, *common, flag, name="other")
    assert summary["step"] == 3
    want, got = _final_weights(eager), _final_weights(other)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("compile", ["default", "reduce-overhead"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_sampling_matches_eager(compile, channels_last):
    """DDIM-10 from the same noise: torch.compile (and CUDA graphs) within 1e-3 of eager."""
    torch.manual_seed(0)
    model = AttentionUNet(in_channels=1, image_size=28, base_channels=16, num_res_blocks=1,
                          attention_resolutions=[7], norm_groups=8)
    noise = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    eager = DiffusionPipeline(model, DDPMScheduler(), (1, 28, 28), device=DEVICE,
                              precision="fp32")(16, steps=10, noise=noise).images
    pipe = DiffusionPipeline(model, DDPMScheduler(), (1, 28, 28), device=DEVICE,
                             precision="fp32", compile=compile, channels_last=channels_last)
    for _ in range(2):  # the second call replays what the first compiled or captured
        images = pipe(16, steps=10, noise=noise).images
    torch.testing.assert_close(images, eager, rtol=1e-3, atol=1e-3)


def test_ema_on_the_device_follows_its_closed_form():
    """Three updates with warm-up: e_n = d_n e_{n-1} + (1 - d_n) w_n, d_n = (1+n)/(10+n)."""
    torch.manual_seed(0)
    model = BasicUNet(image_size=16, base_channels=8).to(DEVICE)
    ema = EMA(model, decay=0.999)
    expected = [p.detach().double().clone() for p in model.parameters()]
    for n in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, n + 1)
        d = (1 + n) / (10 + n)
        expected = [d * e + (1 - d) * p.detach().double()
                    for e, p in zip(expected, model.parameters(), strict=True)]
    for e, p in zip(expected, ema.model.parameters(), strict=True):
        assert p.device.type == torch.device(DEVICE).type
        torch.testing.assert_close(p.double(), e, rtol=1e-5, atol=1e-6)


def test_periodic_fid_runs_on_the_device(tmp_path, tiny_mnist_root):
    """A small FID every 2 steps, sampled on the device by the EMA pipeline: logged,
    finite, above zero, and best.pt kept at the best one."""
    cache = tmp_path / "features"
    run_dir, _ = run_training(
        tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8", *ON_DEVICE,
        "trainer.eval_every=2", "trainer.eval_n=16", "sampler.steps=2",
        f"metrics.cache_dir={cache}", "metrics.feature_epochs=5", "metrics.kid_subset_size=8")
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/fid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 < r["eval/fid"] < 1e4 for r in evals)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == pytest.approx(min(r["eval/fid"] for r in evals))
