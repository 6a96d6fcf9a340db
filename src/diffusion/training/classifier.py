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
from diffusion.errors import CheckpointError
from diffusion.schedulers import NoiseScheduler
from diffusion.training import checkpoint as ckpt
from diffusion.training.interrupt import StopRequest
from diffusion.training.loggers import JsonlLogger


def noise_bands(num_train_timesteps: int, levels: int) -> list[tuple[int, int]]:
    """``levels`` bands [lo, hi) of timesteps covering 0..T-1 (the last takes the rest)."""
    edges = [round(i * num_train_timesteps / levels) for i in range(levels + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


class ClassifierTrainer:
    """Fits ``model(x_t, t) -> logits`` on uint8 ``train`` (images, labels) noised by
    ``scheduler``; writes ``metrics.jsonl``, ``checkpoints/step_*.pt`` (the weights, the
    optimizer and generator state, and the step: ``resume`` continues from one exactly) and
    ``accuracy.json`` (test accuracy per noise band at the last evaluation)."""

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
        self._resume_state: tuple[int, torch.Tensor] | None = None

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

    def save(self, step: int, generator: torch.Generator) -> Path:
        """A checkpoint at ``step``: the weights, the optimizer and the batch generator's
        state, so ``resume`` continues exactly where this left off."""
        return ckpt.save_atomic({"model": self.model.state_dict(),
                                 "optimizer": self.optimizer.state_dict(),
                                 "generator": generator.get_state(), "step": step},
                                ckpt.checkpoint_path(self.run_dir / "checkpoints", step))

    def resume(self, path: str | Path) -> int:
        """Continue from checkpoint ``path`` (one ``save`` wrote): returns its step. A
        checkpoint of an earlier version without the optimizer state cannot continue."""
        state = ckpt.load(path)
        missing = [key for key in ("model", "optimizer", "generator", "step") if key not in state]
        if missing:
            raise CheckpointError(
                f"{path} holds no {', '.join(missing)} (written by an earlier version, which "
                "kept the weights only), so training cannot continue from it: train a new "
                "classifier.")
        ckpt.load_weights(self.model, state["model"], "classifier", path)
        self.optimizer.load_state_dict(state["optimizer"])
        self._resume_state = (int(state["step"]), state["generator"])
        return int(state["step"])

    def fit(self) -> dict:
        """Train to ``steps`` steps (from a ``resume``'s step); returns the summary with the
        last evaluation (accuracy per band). A stop signal (``training.interrupt``) ends it
        after the step it is in, with a checkpoint there; ``summary["interrupted"]`` then
        names the signal and no ``accuracy.json`` is written."""
        generator = torch.Generator().manual_seed(self.seed)
        first = 1
        if self._resume_state is not None:
            first = self._resume_state[0] + 1
            generator.set_state(self._resume_state[1])
        self.model.train()
        start = time.perf_counter()
        with StopRequest() as stop:
            step, accuracy = self._loop(first, generator, stop, start)
        summary = {"step": step, "steps": self.steps, "test_images": len(self.test_images),
                   "accuracy_per_noise_band": accuracy,
                   "wall_time_sec": round(time.perf_counter() - start, 1)}
        if stop.signal is not None:
            return {**summary, "interrupted": stop.signal}
        (self.run_dir / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _loop(self, first: int, generator: torch.Generator, stop: StopRequest,
              start: float) -> tuple[int, dict[str, float]]:
        """Steps ``first``..``steps``, or until ``stop``; returns the last step and the last
        evaluation."""
        T = self.scheduler.num_train_timesteps
        accuracy: dict[str, float] = {}
        step = first - 1
        bar = tqdm(range(first, self.steps + 1), desc="classifier", disable=not self.progress,
                   dynamic_ncols=True, initial=first - 1, total=self.steps)
        for step in bar:
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
            last = step == self.steps or stop.signal is not None
            if step % self.log_every == 0 or last:
                self.logger.log_metrics({
                    "train/loss": loss.item(),
                    "train/accuracy": (logits.argmax(1) == labels).float().mean().item(),
                    "train/seconds": round(time.perf_counter() - start, 1)}, step)
            if (self.eval_every and step % self.eval_every == 0) or step == self.steps:
                accuracy = self.accuracy_per_band()
                self.logger.log_metrics({f"eval/accuracy_{k}": v for k, v in accuracy.items()},
                                        step)
                self.save(step, generator)
            elif last:
                self.save(step, generator)
            if last:
                break
        bar.close()
        return step, accuracy
