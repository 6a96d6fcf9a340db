"""``python -m diffusion.train_classifier data=mnist steps=1000``: a noise-aware classifier.

Trains ``classifier_net`` (conf/classifier_net) on the data's training split noised by ``scheduler``
at random timesteps, into its own run folder ``runs/classifier-<data>/<date>_<time>/``:
``config.yaml``, ``env.json``, ``data.json`` (which files it learned from), ``metrics.jsonl``
(loss, and test accuracy per noise band), ``checkpoints/step_*.pt``, ``status.json`` and, once
it has trained every step, ``accuracy.json``. Sampling uses it with
``diffusion.sample run=<diffusion run> classifier=<this folder> classifier_scale=s``.

Ctrl-C (or SIGTERM, SIGUSR1) stops it after the step it is in, with a checkpoint there;
``python -m diffusion.train_classifier resume=<folder> [steps=N]`` continues it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_writable
from diffusion.commands.side_run import SideCommand
from diffusion.config.build import build_classifier, build_datasets, build_scheduler
from diffusion.config.options import check_classifier_options
from diffusion.data.datasets import data_key
from diffusion.errors import ConfigError
from diffusion.runs.folder import write_env
from diffusion.runs.load import newest_checkpoint
from diffusion.runs.lock import WriterLock
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.training.classifier import ClassifierTrainer
from diffusion.training.loggers import truncate_metrics

RESUME_KEYS = ("steps", "progress", "log_every", "eval_every", "device")
"""What a resume may change: how long and how it runs, not what it learns."""


def train_classifier(cfg: DictConfig, run_dir: Path, progress: dict | None = None) -> dict:
    """Train as ``cfg`` (conf/train_classifier.yaml) says into ``run_dir`` (continuing its
    newest checkpoint when ``cfg.resume`` is set), holding the folder's writer lock.
    Everything is checked, and a resume's checkpoint loaded, before the folder changes;
    ``progress["started"]`` is set then."""
    check_classifier_options(cfg)
    with WriterLock(run_dir):
        return _train_classifier(cfg, run_dir, {} if progress is None else progress)


def _train_classifier(cfg: DictConfig, run_dir: Path, progress: dict) -> dict:
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seed_everything(cfg.seed)
    model = build_classifier(cfg)
    scheduler = build_scheduler(cfg)
    train_set, test_set = build_datasets(cfg.data)
    resuming = bool(cfg.get("resume"))
    if not resuming:
        check_writable(run_dir, "set paths.runs_dir to a writable folder", folder=True,
                       what="the run folder")
    trainer = ClassifierTrainer(
        model, scheduler, train_set.preprocessed(), test_set.preprocessed(), run_dir,
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        seed=cfg.seed, device=device, log_every=cfg.log_every, eval_every=cfg.eval_every,
        eval_n=cfg.eval_n, noise_levels=cfg.noise_levels, progress=cfg.progress)
    if resuming:
        step = trainer.resume(newest_checkpoint(run_dir))
        progress["started"] = True
        truncate_metrics(run_dir / "metrics.jsonl", step)
        (run_dir / "accuracy.json").unlink(missing_ok=True)  # written again at the end
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_env(run_dir, cfg.seed, device, resumed=resuming)
    if not resuming:
        (run_dir / "data.json").write_text(json.dumps({
            "dataset": cfg.data.name, "content_key": data_key(cfg.data),
            "train_images": len(train_set)}, indent=2) + "\n")
    progress["started"] = True
    summary = trainer.fit()
    if "interrupted" not in summary:
        bands = summary["accuracy_per_noise_band"]
        print("test accuracy per noise band: "
              + ", ".join(f"{band} {100 * acc:.1f}%" for band, acc in bands.items()))
    print(f"Run folder: {run_dir}")
    return summary


COMMAND = SideCommand(
    name="train_classifier", what="classifier", marker="classifier_net",
    resume_keys=RESUME_KEYS, train=train_classifier,
    other_kind=lambda run: (f"resume={run} is a diffusion run, not a classifier run: continue "
                            f"it with python -m diffusion.train resume={run}."))
main = COMMAND.main


if __name__ == "__main__":
    main()
