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
import signal
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_writable
from diffusion.commands.launcher import guarded, launch
from diffusion.config.build import build_autoencoder, build_datasets
from diffusion.config.metrics import build_scorer
from diffusion.config.options import check_autoencoder_options
from diffusion.data.datasets import data_key
from diffusion.errors import USER_ERRORS, ConfigError, RunError
from diffusion.runs.folder import record_end, write_env
from diffusion.runs.load import newest_checkpoint, read_config
from diffusion.runs.lock import WriterLock
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.training import checkpoint as ckpt
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


def _work(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun, resuming = hydra_cfg.mode == RunMode.MULTIRUN, bool(cfg.get("resume"))
    progress: dict = {}
    try:
        summary = train_autoencoder(cfg, run_dir, progress)
    except KeyboardInterrupt:  # a second signal, or one before training began
        record_end(run_dir, None, started=bool(progress.get("started")), resuming=resuming,
                   multirun=multirun, interrupted="SIGINT")
        raise
    except (*USER_ERRORS, ValueError, Exception) as exc:
        record_end(run_dir, exc, started=bool(progress.get("started")), resuming=resuming,
                   multirun=multirun)
        raise
    record_end(run_dir, None, started=True, resuming=resuming, multirun=multirun,
               interrupted=summary.get("interrupted"))
    if summary.get("interrupted"):
        name = summary["interrupted"]
        print(f"{name}: stopped at step {summary['step']} of {summary['steps']} with a "
              f"checkpoint; continue with python -m diffusion.train_autoencoder "
              f"resume={run_dir}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name])


class _Finished(Exception):
    """A resume with no steps left."""


def _prepare_resume(run_arg: str, overrides: list[str]) -> list[str]:
    """The Hydra command line that continues autoencoder run ``run_arg``: composed from its
    own config.yaml, in its own folder, with only ``RESUME_KEYS`` changed; its writer lock is
    taken here and held until the process ends."""
    run = Path(run_arg).resolve()
    cfg = read_config(run, key="resume")
    if "autoencoder" not in cfg:
        raise RunError(f"resume={run_arg} is not an autoencoder run (its config has no "
                       f"autoencoder): continue it with the command that trained it.")
    for override in overrides:
        key = override.split("=", 1)[0]
        if key.lstrip("+~") not in RESUME_KEYS or key != key.lstrip("+~"):
            raise ConfigError(
                f"{override}: a resume continues the autoencoder as it was trained, so only "
                f"{', '.join(RESUME_KEYS)} may change: drop it, or train a new autoencoder.")
    step = ckpt.step_of(newest_checkpoint(
        run, "it stopped before its first checkpoint; train a new autoencoder"))
    steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("steps=")
                  and o.split("=", 1)[1].isdigit()), cfg["steps"])
    if step >= steps:
        raise _Finished(f"Autoencoder run {run_arg} is trained to step {step} already "
                        f"(steps={steps}): pass steps=<more> to train it longer.")
    WriterLock(run).acquire()  # one writer: held until this process ends
    return [*overrides, f"resume={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]


def main() -> None:
    """``python -m diffusion.train_autoencoder ...``; see the module docstring."""
    argv = sys.argv[1:]
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if not resume:
        launch("train_autoencoder", _work, distributed=False)
        return
    overrides = [a for a in argv if not a.startswith("resume=")]
    try:
        argv = guarded(_prepare_resume, resume, overrides)
    except _Finished as done:
        print(done)
        return
    launch("config", _work, argv=argv, config_dir=Path(resume).resolve(), distributed=False)


if __name__ == "__main__":
    main()
