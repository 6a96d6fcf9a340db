"""Training a noise-aware classifier for classifier guidance.

Each step draws a batch of labelled training images, a timestep per image (uniform over the
training T) and noise, and fits ``classifier(x_t, t)`` to the labels with cross-entropy. Its
accuracy is measured on the test split per noise level: the T timesteps cut into
``noise_levels`` equal bands, each test image noised at a timestep drawn in the band from a
fixed generator (the same images and noise at every evaluation, so the numbers compare).
Everything is drawn from generators seeded by ``seed``: the same config gives the same
classifier on the CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffusion.data import to_model_range
from diffusion.schedulers import NoiseScheduler
from diffusion.training import checkpoint as ckpt
from diffusion.training.loggers import JsonlLogger


def noise_bands(num_train_timesteps: int, levels: int) -> list[tuple[int, int]]:
    """``levels`` bands [lo, hi) of timesteps covering 0..T-1 (the last takes the rest)."""
    edges = [round(i * num_train_timesteps / levels) for i in range(levels + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


class ClassifierTrainer:
    """Fits ``model(x_t, t) -> logits`` on uint8 ``train`` (images, labels) noised by
    ``scheduler``; writes ``metrics.jsonl``, ``checkpoints/step_*.pt`` (the weights and the
    step) and ``accuracy.json`` (test accuracy per noise band at the last evaluation)."""

    def __init__(self, model: nn.Module, scheduler: NoiseScheduler,
                 train: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], run_dir: str | Path, *,
                 steps: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                 seed: int = 0, device: str | torch.device = "cpu", log_every: int = 100,
                 eval_every: int = 500, eval_n: int = 1000, noise_levels: int = 10,
                 progress: bool = True):
        self.model, self.scheduler = model.to(device), scheduler
        self.train_images, self.train_labels = train
        test_images, test_labels = test
        self.test_images, self.test_labels = test_images[:eval_n], test_labels[:eval_n]
        self.run_dir, self.device = Path(run_dir), torch.device(device)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.log_every, self.eval_every, self.progress = log_every, eval_every, progress
        self.bands = noise_bands(scheduler.num_train_timesteps, noise_levels)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.logger = JsonlLogger(self.run_dir / "metrics.jsonl")

    def _noised(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator):
        noise = torch.randn(x0.shape, generator=generator)
        return self.scheduler.add_noise(x0, noise, t)

    @torch.no_grad()
    def accuracy_per_band(self) -> dict[str, float]:
        """{"t000-099": accuracy, ...} on the test images, each band's draws fixed."""
        self.model.eval()
        out = {}
        x0 = to_model_range(self.test_images)
        for lo, hi in self.bands:
            generator = torch.Generator().manual_seed(self.seed + 1000 + lo)
            t = torch.randint(lo, hi, (len(x0),), generator=generator)
            x_t = self._noised(x0, t, generator)
            correct = 0
            for i in range(0, len(x0), 500):
                logits = self.model(x_t[i:i + 500].to(self.device), t[i:i + 500].to(self.device))
                correct += (logits.argmax(1).cpu() == self.test_labels[i:i + 500]).sum().item()
            out[f"t{lo:03d}-{hi - 1:03d}"] = correct / len(x0)
        self.model.train()
        return out

    def fit(self) -> dict:
        """Train ``steps`` steps; returns the last evaluation (accuracy per band)."""
        generator = torch.Generator().manual_seed(self.seed)
        T = self.scheduler.num_train_timesteps
        self.model.train()
        accuracy: dict[str, float] = {}
        start = time.perf_counter()
        for step in tqdm(range(1, self.steps + 1), desc="classifier", disable=not self.progress,
                         dynamic_ncols=True):
            index = torch.randint(0, len(self.train_images), (self.batch_size,),
                                  generator=generator)
            x0 = to_model_range(self.train_images[index])
            t = torch.randint(0, T, (self.batch_size,), generator=generator)
            x_t = self._noised(x0, t, generator).to(self.device)
            labels = self.train_labels[index].to(self.device)
            logits = self.model(x_t, t.to(self.device))
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if step % self.log_every == 0 or step == self.steps:
                self.logger.log_metrics({
                    "train/loss": loss.item(),
                    "train/accuracy": (logits.argmax(1) == labels).float().mean().item(),
                    "train/seconds": round(time.perf_counter() - start, 1)}, step)
            if (self.eval_every and step % self.eval_every == 0) or step == self.steps:
                accuracy = self.accuracy_per_band()
                self.logger.log_metrics({f"eval/accuracy_{k}": v for k, v in accuracy.items()},
                                        step)
                ckpt.save_atomic({"model": self.model.state_dict(), "step": step},
                                 ckpt.checkpoint_path(self.run_dir / "checkpoints", step))
        summary = {"step": self.steps, "test_images": len(self.test_images),
                   "accuracy_per_noise_band": accuracy,
                   "wall_time_sec": round(time.perf_counter() - start, 1)}
        (self.run_dir / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
