"""Training the KL autoencoder of latent diffusion (``python -m diffusion.train_autoencoder``).

Each step draws a batch of training images from a generator seeded by ``seed``, encodes them,
decodes a posterior sample and minimises LDM's loss: the reconstruction error (L1 or L2)
summed over a sample's pixels, plus ``kl_weight`` times the KL divergence of the posterior
from N(0, I) summed over its latent elements, both averaged over the batch (Rombach et al.'s
convention, so ``kl_weight = 1e-6`` means what it means there). With ``disc_weight > 0`` a
PatchGAN discriminator joins from step ``disc_start`` (hinge loss; the generator's adversarial
term weighted adaptively by the ratio of the reconstruction and adversarial gradients at the
decoder's last layer, as LDM does). No perceptual loss: it needs downloaded weights.

An EMA of the weights is what evaluations, grids and the encoder of latent runs use. Every
``eval_every`` steps: PSNR of the EMA model's reconstructions (posterior means) of ``eval_n``
held-out images, a grid of inputs above their reconstructions, a checkpoint. At the end,
``eval.json``: PSNR, and, with a scorer, the FID of the reconstructions of the held-out split
against that split (the floor: as many training images against it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.data import to_model_range
from diffusion.errors import CheckpointError, TrainingError
from diffusion.models.autoencoder import AutoencoderKL, PatchDiscriminator, hinge_d_loss
from diffusion.reporting.figures import save_grid
from diffusion.training import checkpoint as ckpt
from diffusion.training.ema import EMA
from diffusion.training.interrupt import StopRequest
from diffusion.training.loggers import JsonlLogger

LOSSES = ("l1", "l2")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on [0, 1] (peak 1), clamped first."""
    a = ((x.float() + 1) / 2).clamp(0, 1)
    b = ((y.float() + 1) / 2).clamp(0, 1)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def reconstruct(model: AutoencoderKL, images: torch.Tensor, device: torch.device,
                batch_size: int = 250) -> torch.Tensor:
    """Reconstructions (posterior means decoded) of uint8 ``images``, in [-1, 1] on the CPU."""
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size]).to(device)
        out.append(model.decode(model.encode(x).mode()).clamp(-1, 1).cpu())
    return torch.cat(out)


class AutoencoderTrainer:
    """Fits ``model`` on uint8 ``train`` images; writes ``metrics.jsonl``,
    ``checkpoints/step_*.pt`` (weights, EMA, optimizers, batch generator and step: ``resume``
    continues exactly), ``samples/step_*.png`` and, at the end, ``eval.json``."""

    def __init__(self, model: AutoencoderKL, train: torch.Tensor, test: torch.Tensor,
                 run_dir: str | Path, *, steps: int, batch_size: int, lr: float,
                 kl_weight: float = 1e-6, loss: str = "l1", disc_weight: float = 0.0,
                 disc_start: int = 0, disc_channels: int = 64, ema_decay: float = 0.999,
                 grad_clip: float = 1.0, seed: int = 0, device: str | torch.device = "cpu",
                 log_every: int = 100, eval_every: int = 500, eval_n: int = 1000,
                 sample_n: int = 8, keep_last: int = 3, scorer=None, progress: bool = True):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_images, self.test_images = train, test
        self.run_dir = Path(run_dir)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.kl_weight, self.loss, self.grad_clip = kl_weight, loss, grad_clip
        self.disc_weight, self.disc_start = disc_weight, disc_start
        self.log_every, self.eval_every, self.eval_n = log_every, eval_every, eval_n
        self.sample_n, self.keep_last, self.scorer = sample_n, keep_last, scorer
        self.progress = progress
        # LDM's optimiser: Adam with beta1 = 0.5, for the GAN's sake and kept without it
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
        self.discriminator: nn.Module | None = None
        self.disc_optimizer = None
        if disc_weight > 0:
            self.discriminator = PatchDiscriminator(model.in_channels, disc_channels).to(
                self.device)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr,
                                                   betas=(0.5, 0.9))
        self.ema = EMA(model, decay=ema_decay)
        self.logger = JsonlLogger(self.run_dir / "metrics.jsonl")
        self._resume_state: tuple[int, torch.Tensor] | None = None

    # ---------------------------------------------------------------- checkpoints
    def save(self, step: int, generator: torch.Generator) -> Path:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "generator": generator.get_state(),
                 "step": step, "kind": "autoencoder"}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        directory = self.run_dir / "checkpoints"
        path = ckpt.save_atomic(state, ckpt.checkpoint_path(directory, step))
        if self.keep_last:
            ckpt.prune(directory, self.keep_last)
        return path

    def resume(self, path: str | Path) -> int:
        """Continue from checkpoint ``path`` (one ``save`` wrote); returns its step."""
        state = ckpt.load(path)
        missing = [k for k in ("model", "ema", "optimizer", "generator", "step") if k not in state]
        if self.discriminator is not None:
            missing += [k for k in ("discriminator", "disc_optimizer") if k not in state]
        if missing:
            raise CheckpointError(f"{path} holds no {', '.join(missing)}: it is not a "
                                  "checkpoint of this autoencoder run, so training cannot "
                                  "continue from it.")
        ckpt.load_weights(self.model, state["model"], "autoencoder", path)
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self._resume_state = (int(state["step"]), state["generator"])
        return int(state["step"])

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> dict[str, float]:
        """PSNR of the EMA model on the first ``eval_n`` held-out images, and the grid."""
        model = self.ema.model
        images = self.test_images[:self.eval_n]
        recon = reconstruct(model, images, self.device)
        value = float(psnr(recon, to_model_range(images)).mean())
        shown = to_model_range(images[:self.sample_n])
        save_grid(torch.cat([shown, recon[:self.sample_n]]),
                  self.run_dir / "samples" / f"step_{step:08d}.png", nrow=len(shown))
        return {"eval/psnr": value}

    def final_scores(self) -> dict:
        """``eval.json``'s scores: PSNR over the whole held-out split, and the FID of its
        reconstructions with ``scorer`` (when given) against the split itself."""
        recon = reconstruct(self.ema.model, self.test_images, self.device)
        scores: dict = {"psnr": float(psnr(recon, to_model_range(self.test_images)).mean()),
                        "psnr_n": len(recon)}
        if self.scorer is not None:
            result = self.scorer.score(images=recon)
            scores["rfid"] = result.to_dict()
            print(f"reconstruction {result}", flush=True)
        return scores

    # ---------------------------------------------------------------- training
    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        last = self.model.decoder.last_layer
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.disc_weight

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step; the logged values stay tensors (no host sync unless they are logged)."""
        index = torch.randint(0, len(self.train_images), (self.batch_size,), generator=generator)
        x = to_model_range(self.train_images[index]).to(self.device)
        posterior = self.model.encode(x)
        noise = torch.randn(posterior.mean.shape, generator=generator).to(self.device)
        recon = self.model.decode(posterior.mean + posterior.std * noise)
        error = (recon - x).abs() if self.loss == "l1" else (recon - x).pow(2)
        nll = error.flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = nll + self.kl_weight * kl
        logs = {"train/rec_per_pixel": error.detach().mean(), "train/kl": kl.detach()}
        adversarial = self.discriminator is not None and step >= self.disc_start
        if adversarial:
            g_loss = -self.discriminator(recon).mean()
            weight = self._adaptive_weight(nll, g_loss)
            loss = loss + weight * g_loss
            logs.update({"train/g_loss": g_loss.detach(), "train/disc_weight": weight})
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the autoencoder's loss is {float(loss)} at step {step}: lower lr or "
                f"kl_weight, and train again (the checkpoints before this step are kept).")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, step)
        if adversarial:
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            logs["train/d_loss"] = d_loss.detach()
        logs["train/loss"] = loss.detach()
        return logs

    def fit(self) -> dict:
        """Train to ``steps`` (from a ``resume``'s step); returns the summary. A stop signal
        ends it after the step it is in, with a checkpoint there (``summary["interrupted"]``
        names the signal; no ``eval.json`` then)."""
        generator = torch.Generator().manual_seed(self.seed)
        first = 1
        if self._resume_state is not None:
            first = self._resume_state[0] + 1
            generator.set_state(self._resume_state[1])
        self.model.train()
        start = time.perf_counter()
        step, last_eval = first - 1, {}
        with StopRequest() as stop:
            bar = tqdm(range(first, self.steps + 1), desc="autoencoder",
                       disable=not self.progress, dynamic_ncols=True, initial=first - 1,
                       total=self.steps)
            for step in bar:
                logs = self.train_step(step, generator)
                last = step == self.steps or stop.signal is not None
                if step % self.log_every == 0 or last:
                    logs = {k: float(v) for k, v in logs.items()}
                    seconds = time.perf_counter() - start
                    logs["train/images_per_sec"] = (step - first + 1) * self.batch_size / seconds
                    self.logger.log_metrics(logs, step)
                if (self.eval_every and step % self.eval_every == 0) or step == self.steps:
                    last_eval = self.evaluate(step)
                    self.logger.log_metrics(last_eval, step)
                    self.save(step, generator)
                elif last:
                    self.save(step, generator)
                if last:
                    break
            bar.close()
        summary = {"step": step, "steps": self.steps, **{k.split("/")[1]: v
                                                         for k, v in last_eval.items()},
                   "wall_time_sec": round(time.perf_counter() - start, 1)}
        if stop.signal is not None:
            return {**summary, "interrupted": stop.signal}
        scores = self.final_scores()
        (self.run_dir / "eval.json").write_text(json.dumps({**summary, **scores}, indent=2)
                                                + "\n")
        return {**summary, **scores}
