"""``python -m diffusion.train_autoencoder data=<dataset>``: the KL autoencoder of latent diffusion.

Trains ``autoencoder`` (conf/autoencoder: ``kl_f4``, ``kl_f8``) on the data's training split
into its own run folder ``runs/autoencoder-<data>/<date>_<time>/``: ``config.yaml``,
``env.json``, ``data.json`` (which files it learned from), ``metrics.jsonl`` (losses, PSNR),
``checkpoints/step_*.pt`` (weights, EMA, optimizers), ``samples/step_*.png`` (held-out inputs
above their reconstructions), ``status.json`` and, once it has trained every step,
``eval.json`` (PSNR over the held-out split and the FID of its reconstructions). Any dataset
works, image folders included. A diffusion run trains in its latent space with
``python -m diffusion.train latent=<this folder>``.

Ctrl-C (or SIGTERM, SIGUSR1) stops it after the step it is in, with a checkpoint there;
``python -m diffusion.train_autoencoder resume=<folder> [steps=N]`` continues it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_writable
from diffusion.commands.side_run import SideCommand
from diffusion.config.build import build_autoencoder, build_datasets
from diffusion.config.metrics import build_scorer
from diffusion.config.options import check_autoencoder_options
from diffusion.data.datasets import data_key
from diffusion.errors import ConfigError
from diffusion.runs.folder import write_env
from diffusion.runs.load import newest_checkpoint
from diffusion.runs.lock import WriterLock
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.training.autoencoder import AutoencoderTrainer
from diffusion.training.loggers import truncate_metrics

RESUME_KEYS = ("steps", "progress", "log_every", "eval_every", "device", "rfid")
"""What a resume may change: how long and how it runs, not what it learns."""


def train_autoencoder(cfg: DictConfig, run_dir: Path, progress: dict | None = None) -> dict:
    """Train as ``cfg`` (conf/train_autoencoder.yaml) says into ``run_dir`` (continuing its
    newest checkpoint when ``cfg.resume`` is set), holding the folder's writer lock.
    Everything is checked, and a resume's checkpoint loaded, before the folder changes."""
    check_autoencoder_options(cfg)
    with WriterLock(run_dir):
        return _train(cfg, run_dir, {} if progress is None else progress)


def _train(cfg: DictConfig, run_dir: Path, progress: dict) -> dict:
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seed_everything(cfg.seed)
    model = build_autoencoder(cfg.autoencoder)
    train_set, test_set = build_datasets(cfg.data)
    resuming = bool(cfg.get("resume"))
    if not resuming:
        check_writable(run_dir, "set paths.runs_dir to a writable folder", folder=True,
                       what="the run folder")
    train_images, _ = train_set.preprocessed()
    test_images, _ = test_set.preprocessed()
    scorer = None
    if cfg.rfid:
        scorer = build_scorer(cfg.metrics, cfg.data, device=device, progress=cfg.progress)
    trainer = AutoencoderTrainer(
        model, train_images, test_images, run_dir, steps=cfg.steps, batch_size=cfg.batch_size,
        lr=cfg.lr, kl_weight=cfg.kl_weight, loss=cfg.loss, disc_weight=cfg.disc_weight,
        disc_start=cfg.disc_start, ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip,
        seed=cfg.seed, device=device, log_every=cfg.log_every, eval_every=cfg.eval_every,
        eval_n=cfg.eval_n, sample_n=cfg.sample_n, keep_last=cfg.keep_last, scorer=scorer,
        progress=cfg.progress)
    if resuming:
        step = trainer.resume(newest_checkpoint(run_dir))
        truncate_metrics(run_dir / "metrics.jsonl", step)
        (run_dir / "eval.json").unlink(missing_ok=True)  # written again at the end
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_env(run_dir, cfg.seed, device, resumed=resuming)
    if not resuming:
        (run_dir / "data.json").write_text(json.dumps({
            "dataset": cfg.data.name, "content_key": data_key(cfg.data),
            "train_images": len(train_images), "test_images": len(test_images)},
            indent=2) + "\n")
    progress["started"] = True
    n = sum(p.numel() for p in model.parameters())
    print(f"Training the autoencoder ({n / 1e6:.2f}M parameters, f = "
          f"{model.downsample_factor}, latents {model.latent_shape(cfg.data.image_size)}) on "
          f"{len(train_images)} images, {device}: steps -> {cfg.steps}.", flush=True)
    summary = trainer.fit()
    if "interrupted" not in summary:
        print(f"held-out PSNR {summary['psnr']:.2f} dB over {summary['psnr_n']} images")
    print(f"Run folder: {run_dir}")
    return summary


COMMAND = SideCommand(
    name="train_autoencoder", what="autoencoder", marker="autoencoder",
    resume_keys=RESUME_KEYS, train=train_autoencoder,
    other_kind=lambda run: (f"resume={run} is not an autoencoder run (its config has no "
                            f"autoencoder): continue it with the command that trained it."))
main = COMMAND.main


if __name__ == "__main__":
    main()
