"""``python -m diffusion.train``: compose the config, build the parts, train.

    python -m diffusion.train model=unet_attn data=mnist
    python -m diffusion.train -m scheduler.beta_schedule=linear,cosine
    python -m diffusion.train resume=runs/unet_attn-mnist/2026-01-01_12-00-00 trainer.max_steps=M

This is the only layer that reads Hydra: everything it builds is a plain object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from diffusion.cli import CONF_DIR, USER_ERRORS, fail, seed_everything
from diffusion.rundir import write_env
from diffusion.builders import (
    build_datasets,
    build_logger,
    build_model,
    build_scheduler,
    build_trainer_config,
    validate,
)

log = logging.getLogger("diffusion.train")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train from a composed config into ``run_dir``; returns the trainer's summary."""
    from hydra.utils import instantiate

    from diffusion.training import Trainer

    validate(cfg)
    trainer_cfg = build_trainer_config(cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg)
    scheduler = build_scheduler(cfg)
    train_set, val_set = build_datasets(cfg.data)
    resuming = cfg.resume is not None
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if resuming:
        with (run_dir / "resumes.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "command": sys.argv}) + "\n")
    logger = build_logger(cfg, run_dir, resuming)
    trainer = Trainer(
        model, scheduler, instantiate(cfg.optimizer), train_set, trainer_cfg,
        batch_size=cfg.data.batch_size, run_dir=run_dir, val_set=val_set,
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        logger=logger, seed=cfg.seed, num_workers=cfg.data.num_workers,
        conditional=cfg.model.get("num_classes") is not None,
        on_device=cfg.data.on_device)
    write_env(run_dir, cfg.seed, trainer.device,
              name="env.json" if not resuming else f"env-resume-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if logger is not None:
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        if resuming:
            trainer.resume()
        log.info("Run folder: %s", run_dir)
        summary = trainer.fit()
    finally:
        trainer.logger.finish()
    print(f"Run folder: {run_dir}")
    return summary


def _main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = train(cfg, run_dir)
        (run_dir / "status.json").write_text(json.dumps({"status": "completed"}) + "\n")
        return summary
    except (*USER_ERRORS, Exception) as exc:
        (run_dir / "status.json").write_text(json.dumps(
            {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        if multirun:  # one failed job must not end the sweep
            log.error("Job %s failed: %s", hydra_cfg.job.num, exc,
                      exc_info=not isinstance(exc, USER_ERRORS))
            return None
        if isinstance(exc, USER_ERRORS):
            fail(exc)
        raise


def main() -> None:
    """Hydra entry point; ``resume=<run>`` composes from that run's own saved config."""
    argv = sys.argv[1:]
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume:
        run = Path(resume).resolve()
        if not (run / "config.yaml").is_file():
            fail(f"resume={resume} is not a run folder (no config.yaml in it): pass the folder "
                 "that diffusion.train printed, e.g. runs/<name>/<date>_<time>.")
        sys.argv = [sys.argv[0], *[a for a in argv if not a.startswith("resume=")],
                    f"resume={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]
        config_path, config_name = str(run), "config"
    else:
        config_path, config_name = str(CONF_DIR), "train"
    hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(_main)()


if __name__ == "__main__":
    main()
