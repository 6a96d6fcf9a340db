"""Training numerics: the loss falls, EMA and LR schedules match their closed forms, mixed
precision steps track fp32, and skipped fp16 steps advance nothing."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from diffusion.errors import TrainingError
from diffusion.models import BasicUNet
from diffusion.runtime.device import resolve_precision
from diffusion.schedulers import DDPMScheduler
from diffusion.training.config import TrainerConfig
from diffusion.training.ema import EMA
from diffusion.training.loggers import read_metrics
from diffusion.training.lr import warmup_schedule
from diffusion.training.trainer import Trainer
from test_train import run_training


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_falls_over_a_hundred_steps(tmp_path, tiny_mnist_root, seed):
    # Measured (seeds 0-11, this setup): the first 10 steps average 0.67-0.93, the last 10
    # 0.13-0.21; first/last = 3.1-5.9 (4.5 typical). 2x leaves a wide margin.
    run_dir, _ = run_training(
        tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8", "optimizer.lr=2e-3",
        "lr_scheduler.warmup_steps=0", "trainer.max_steps=100", "trainer.log_every=1",
        "trainer.sample_every=0", "trainer.val_every=0", "trainer.ckpt_every=0", f"seed={seed}")
    losses = [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")
              if "train/loss" in r]
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first / last > 2.0, (first, last)


class Scalar(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value, dtype=torch.float64))


def test_ema_warmup_follows_its_closed_form():
    """Decay min(0.5, (1 + n) / (10 + n)) for the n-th update: 0.1, 2/11, 3/12, ... then 0.5."""
    model, decay = Scalar(3.0), 0.5
    ema = EMA(model, decay=decay, warmup=True)
    values = [float(v) for v in torch.linspace(-2, 5, 14, dtype=torch.float64)]
    expected = 3.0
    for n, value in enumerate(values):
        model.w.data.fill_(value)
        ema.update(model, step=n + 1)
        d = min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert ema.model.w.item() == pytest.approx(expected, rel=1e-12), n
    assert ema.num_updates == len(values)
    # the first update keeps a tenth of the initial value
    first = EMA(Scalar(3.0), decay=decay)
    first.update(Scalar(-7.0), step=1)
    assert first.model.w.item() == pytest.approx(0.1 * 3.0 + 0.9 * -7.0)


@pytest.mark.parametrize("every", [1, 3])
def test_ema_update_every_keeps_the_time_constant(every):
    """Towards a constant v without warmup: e = v + (e0 - v) * decay ** (steps taken), with
    updates only on multiples of ``every`` and the decay raised to ``every``."""
    model, decay, e0, v = Scalar(1.0), 0.9, 1.0, -1.0
    ema = EMA(model, decay=decay, warmup=False, update_every=every)
    model.w.data.fill_(v)
    for step in range(1, 13):
        before = ema.model.w.item()
        ema.update(model, step)
        if step % every:
            assert ema.model.w.item() == before
        assert ema.model.w.item() == pytest.approx(
            v + (e0 - v) * decay ** (every * (step // every)), rel=1e-12), step
    assert ema.num_updates == 12 // every


def _lr_multipliers(steps: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = warmup_schedule(opt, total_steps=10, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        schedule.step()
    return out


COS = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]


@pytest.mark.parametrize(("decay", "expected"), [
    ("constant", [0.25, 0.5, 0.75, 1.0] + [1.0] * 9),
    ("linear", [0.25, 0.5, 0.75, 1.0, 1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1, 0.1, 0.1]),
    ("cosine", [0.25, 0.5, 0.75, 1.0, *COS, 0.1, 0.1]),
])
def test_lr_schedule_multipliers(decay, expected):
    """total 10, warm-up 4, min_lr_ratio 0.1: the multiplier in force at steps 0..12."""
    assert COS[3] == pytest.approx(0.55) and COS[1] == pytest.approx(0.9397114317)
    got = _lr_multipliers(13, warmup_steps=4, decay=decay, min_lr_ratio=0.1)
    assert got == pytest.approx(expected, abs=1e-12)


def test_lr_schedule_without_warmup_starts_at_full_rate():
    assert _lr_multipliers(3, decay="linear") == pytest.approx([1.0, 0.9, 0.8])


# ------------------------------------------------------------------------- trainer steps


def _trainer(tmp_path, precision: str, optimizer=None, **config) -> Trainer:
    """A tiny BasicUNet on 16x16 images, the same weights and noise for every precision."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    torch.manual_seed(0)
    model = BasicUNet(image_size=16, base_channels=8, time_embed_dim=16)
    cfg = TrainerConfig(device="cpu", precision=precision, ema_decay=0.9, progress=False,
                        **config)
    return Trainer(model, DDPMScheduler(num_train_timesteps=100),
                   optimizer or functools.partial(torch.optim.AdamW, lr=1e-3),
                   TensorDataset(images, torch.zeros(8, dtype=torch.long)), cfg, batch_size=8,
                   run_dir=tmp_path / precision,
                   lr_scheduler=functools.partial(warmup_schedule, warmup_steps=3), seed=0)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# Measured (this model and batch, one SGD step): relative difference to fp32 of the loss and
# of the update (the gradient): bf16 3e-4 and 3e-3, fp16 1e-6 and 5e-4. Tolerances are 10x.
TOLERANCE = {"bf16": (3e-3, 3e-2), "fp16": (1e-4, 5e-3)}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_tracks_fp32(tmp_path, precision):
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    results = {}
    for p in ("fp32", precision):
        trainer = _trainer(tmp_path, p, optimizer=sgd, grad_clip=0)
        before = _flat(trainer.model)
        loss, _, _ = trainer.train_step(itertools.repeat(trainer.train_set.tensors))
        assert trainer.step == 1
        results[p] = loss.item(), _flat(trainer.model) - before
    (loss32, update32), (loss, update) = results["fp32"], results[precision]
    assert math.isfinite(loss) and torch.isfinite(update).all()
    assert not torch.equal(update, update32)  # autocast did run in the lower precision
    loss_tol, update_tol = TOLERANCE[precision]
    assert loss == pytest.approx(loss32, rel=loss_tol)
    assert (update - update32).norm() / update32.norm() < update_tol


def test_skipped_fp16_step_advances_nothing(tmp_path):
    trainer = _trainer(tmp_path, "fp16")
    batches = itertools.repeat(trainer.train_set.tensors)
    trainer.train_step(batches)
    assert (trainer.step, trainer.lr_scheduler.last_epoch, trainer.skipped_steps) == (1, 1, 0)
    weights, ema, scale = _flat(trainer.model), _flat(trainer.ema.model), trainer.scaler.get_scale()
    lr = trainer.optimizer.param_groups[0]["lr"]

    param = next(trainer.model.parameters())
    hook = param.register_hook(lambda grad: torch.full_like(grad, math.inf))
    loss, _, _ = trainer.train_step(batches)
    hook.remove()
    assert math.isfinite(loss.item())
    assert (trainer.step, trainer.lr_scheduler.last_epoch, trainer.skipped_steps) == (1, 1, 1)
    assert trainer.ema.num_updates == 1 and trainer.optimizer.param_groups[0]["lr"] == lr
    assert torch.equal(_flat(trainer.model), weights)
    assert torch.equal(_flat(trainer.ema.model), ema)
    assert trainer.scaler.get_scale() == scale / 2

    trainer.train_step(batches)
    assert (trainer.step, trainer.lr_scheduler.last_epoch, trainer.skipped_steps) == (2, 2, 1)
    assert trainer.ema.num_updates == 2
    assert not torch.equal(_flat(trainer.model), weights)
    assert not torch.equal(_flat(trainer.ema.model), ema)


def test_fp16_step_with_a_nan_loss_stops_training(tmp_path):
    trainer = _trainer(tmp_path, "fp16")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(math.nan)
    with pytest.raises(TrainingError, match=r"The loss became nan at step 0"):
        trainer.train_step(itertools.repeat(trainer.train_set.tensors))
    assert trainer.step == 0 and trainer.skipped_steps == 1


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    """bf16 autocast only where the CPU multiplies bf16 in hardware: elsewhere autocast's bf16
    convolutions take PyTorch's reference kernels (11x slower than fp32, measured)."""
    monkeypatch.delenv("DIFFUSION_CPU_BF16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    # DIFFUSION_CPU_BF16 overrides the CPU's answer either way
    monkeypatch.setenv("DIFFUSION_CPU_BF16", "1" if expected == "fp32" else "0")
    flipped = "bf16" if expected == "fp32" else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == flipped
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # explicit stays explicit
    monkeypatch.setenv("DIFFUSION_CPU_BF16", "yes")
    with pytest.raises(ValueError, match=r"^DIFFUSION_CPU_BF16 must be 0 \(fp32\) or 1 "
                                         r"\(bf16\), or unset to let the CPU decide; got 'yes'.$"):
        resolve_precision("auto", torch.device("cpu"))
