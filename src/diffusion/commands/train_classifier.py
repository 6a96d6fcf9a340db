"""``python -m diffusion.train_classifier data=mnist steps=1000``: a noise-aware classifier.

Trains ``classifier_net`` (conf/classifier_net) on the data's training split noised by ``scheduler``
at random timesteps, into its own run folder ``runs/classifier-<data>/<date>_<time>/``:
``config.yaml``, ``env.json``, ``metrics.jsonl`` (loss, and test accuracy per noise band),
``checkpoints/step_*.pt`` and ``accuracy.json``. Sampling uses it with
``diffusion.sample run=<diffusion run> classifier=<this folder> classifier_scale=s``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_writable
from diffusion.commands.launcher import launch
from diffusion.config.build import build_classifier, build_datasets, build_scheduler
from diffusion.config.options import check_classifier_options
from diffusion.errors import ConfigError
from diffusion.runs.folder import write_env
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.training.classifier import ClassifierTrainer


def train_classifier(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as ``cfg`` (conf/train_classifier.yaml) says into ``run_dir``."""
    check_classifier_options(cfg)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seed_everything(cfg.seed)
    model = build_classifier(cfg)
    scheduler = build_scheduler(cfg)
    train_set, test_set = build_datasets(cfg.data)
    check_writable(run_dir, "set paths.runs_dir to a writable folder", folder=True,
                   what="the run folder")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_env(run_dir, cfg.seed, device)
    trainer = ClassifierTrainer(
        model, scheduler, train_set.preprocessed(), test_set.preprocessed(), run_dir,
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        seed=cfg.seed, device=device, log_every=cfg.log_every, eval_every=cfg.eval_every,
        eval_n=cfg.eval_n, noise_levels=cfg.noise_levels, progress=cfg.progress)
    summary = trainer.fit()
    bands = summary["accuracy_per_noise_band"]
    print("test accuracy per noise band: "
          + ", ".join(f"{band} {100 * acc:.1f}%" for band, acc in bands.items()))
    print(f"Run folder: {run_dir}")
    return summary


def _work(cfg: DictConfig) -> None:
    train_classifier(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """``python -m diffusion.train_classifier ...``; see the module docstring."""
    launch("train_classifier", _work, distributed=False)


if __name__ == "__main__":
    main()
