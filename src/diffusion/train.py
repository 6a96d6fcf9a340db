"""``python -m diffusion.train``: compose the config, build the parts, train.

    python -m diffusion.train model=unet_attn data=mnist
    python -m diffusion.train -m scheduler.beta_schedule=linear,cosine
    python -m diffusion.train resume=runs/unet_attn-mnist/2026-01-01_12-00-00 trainer.max_steps=M

This is the only layer that reads Hydra: everything it builds is a plain object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from diffusion import distributed as dist
from diffusion.builders import (
    build_datasets,
    build_logger,
    build_model,
    build_scheduler,
    build_trainer_config,
    validate,
)
from diffusion.cli import CONF_DIR, USER_ERRORS, fail, seed_everything
from diffusion.rundir import write_env

log = logging.getLogger("diffusion.train")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train from a composed config into ``run_dir``; returns the trainer's summary."""
    from hydra.utils import instantiate

    from diffusion.training import Trainer

    validate(cfg)
    trainer_cfg = build_trainer_config(cfg)
    local_rank = dist.init_from_env()
    if dist.world_size() > 1 and trainer_cfg.device == "auto" and torch.cuda.is_available():
        trainer_cfg.device = f"cuda:{local_rank}"
    evaluator = None
    if trainer_cfg.eval_every:  # a periodic small FID; every rank samples a share
        from diffusion.evaluate import build_evaluator

        evaluator = build_evaluator(cfg, device=trainer_cfg.device)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg)
    scheduler = build_scheduler(cfg)
    seed_everything(cfg.seed + dist.rank())  # then per-rank streams (dropout, workers)
    train_set, val_set = build_datasets(cfg.data)
    resuming = cfg.resume is not None
    main_rank = dist.is_main()
    if main_rank:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if resuming and main_rank:
        with (run_dir / "resumes.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "command": sys.argv}) + "\n")
    logger = build_logger(cfg, run_dir, resuming) if main_rank else None
    trainer = Trainer(
        model, scheduler, instantiate(cfg.optimizer), train_set, trainer_cfg,
        batch_size=cfg.data.batch_size, run_dir=run_dir, val_set=val_set,
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        logger=logger, seed=cfg.seed, num_workers=cfg.data.num_workers,
        conditional=cfg.model.get("num_classes") is not None,
        on_device=cfg.data.on_device, evaluator=evaluator)
    if main_rank:
        write_env(run_dir, cfg.seed, trainer.device,
                  name="env.json" if not resuming
                  else f"env-resume-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if logger is not None:
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        if resuming:
            trainer.resume()
        log.info("Run folder: %s", run_dir)
        summary = trainer.fit()
    finally:
        trainer.logger.finish()
    if main_rank:
        print(f"Run folder: {run_dir}")
    return summary


def _main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if dist.launched_by_torchrun():  # every rank works in rank 0's run folder
        dist.init_from_env()
        run_dir = Path(dist.broadcast_object(str(run_dir)))
    try:
        summary = train(cfg, run_dir)
        if dist.is_main():
            (run_dir / "status.json").write_text(json.dumps({"status": "completed"}) + "\n")
        return summary
    except (*USER_ERRORS, Exception) as exc:
        if dist.is_main():
            (run_dir / "status.json").write_text(json.dumps(
                {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        if multirun:  # one failed job must not end the sweep
            log.error("Job %s failed: %s", hydra_cfg.job.num, exc,
                      exc_info=not isinstance(exc, USER_ERRORS))
            return None
        if isinstance(exc, USER_ERRORS):
            fail(exc)
        raise
    finally:
        dist.shutdown()


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
    if dist.launched_by_torchrun() and int(os.environ.get("RANK", 0)) > 0:
        # ranks > 0 write nothing of their own: rank 0's run folder is broadcast to them
        scratch = tempfile.mkdtemp(prefix=f"diffusion-rank{os.environ['RANK']}-")
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(_main)()


if __name__ == "__main__":
    main()
