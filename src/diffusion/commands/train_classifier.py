"""``python -m diffusion.train_classifier data=mnist steps=1000``: a noise-aware classifier.

Trains ``classifier_net`` (conf/classifier_net) on the data's training split noised by ``scheduler``
at random timesteps, into its own run folder ``runs/classifier-<data>/<date>_<time>/``:
``config.yaml``, ``env.json``, ``metrics.jsonl`` (loss, and test accuracy per noise band),
``checkpoints/step_*.pt`` and ``accuracy.json``. Sampling uses it with
``diffusion.sample run=<diffusion run> classifier=<this folder> classifier_scale=s``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffusion.config.build import build_classifier, build_datasets, build_scheduler
from diffusion.commands.launcher import USER_ERRORS, fail, seed_everything
from diffusion.runtime.device import resolve_device
from diffusion.errors import ConfigError
from diffusion.config.paths import CONF_DIR
from diffusion.runs.folder import check_writable, write_env
from diffusion.sampling.checks import check_int, is_int
from diffusion.training.classifier import ClassifierTrainer


def check_classifier_config(cfg: DictConfig) -> None:
    """The plain settings, before any data is read or weights allocated."""
    for key, minimum in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("eval_every", 0),
                         ("eval_n", 1), ("noise_levels", 1)):
        try:
            check_int(key, cfg[key], minimum=minimum)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key in ("lr", "weight_decay"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | float) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a number >= 0; got {cfg[key]!r}.")
    if not is_int(cfg.seed):
        raise ConfigError(f"seed must be an integer; got {cfg.seed!r}.")
    if cfg.noise_levels > cfg.scheduler.num_train_timesteps:
        raise ConfigError(f"noise_levels must be at most scheduler.num_train_timesteps="
                          f"{cfg.scheduler.num_train_timesteps}; got {cfg.noise_levels}.")


def train_classifier(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as ``cfg`` (conf/train_classifier.yaml) says into ``run_dir``."""
    check_classifier_config(cfg)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    seed_everything(cfg.seed)
    model = build_classifier(cfg)
    scheduler = build_scheduler(cfg)
    train_set, test_set = build_datasets(cfg.data)
    check_writable(run_dir, "the run folder", "set paths.runs_dir to a writable folder.")
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_classifier")
def _main(cfg: DictConfig) -> None:
    try:
        train_classifier(cfg, Path(HydraConfig.get().runtime.output_dir))
    except USER_ERRORS as exc:
        fail(exc)


def main() -> None:
    """``python -m diffusion.train_classifier ...``; see the module docstring."""
    _main()


if __name__ == "__main__":
    main()
