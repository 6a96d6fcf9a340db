"""``python -m diffusion.train``: compose the config, build the parts, train.

    python -m diffusion.train model=unet_attn data=mnist
    python -m diffusion.train -m scheduler.beta_schedule=linear,cosine
    python -m diffusion.train resume=runs/unet_attn-mnist/2026-01-01_12-00-00 trainer.max_steps=M
    python -m diffusion.train rerun=runs/unet_attn-mnist/2026-01-01_12-00-00 [seed=1]

This is the only layer that reads Hydra: everything it builds is a plain object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.commands.launcher import fail, guarded, launch
from diffusion.config import preflight
from diffusion.config.build import (
    build_datasets,
    build_logger,
    build_low_res,
    build_lr_scheduler,
    build_model,
    build_objective,
    build_optimizer,
    build_scheduler,
    build_trainer_config,
    build_training_sampler,
    fit_to_data,
)
from diffusion.config.finetune import (
    finetune_model,
    prepare_finetune,
    resolve_init_from,
    uses_init_weights,
)
from diffusion.config.keys import check_launcher
from diffusion.config.latent import latent_data
from diffusion.config.metrics import build_evaluator
from diffusion.config.paths import CONF_DIR
from diffusion.config.preflight import NothingToDo, check_config, check_resume
from diffusion.config.runs import run_config
from diffusion.errors import USER_ERRORS, ConfigError, RunError
from diffusion.runs.folder import (
    append_resume,
    create_run_dir,
    record_end,
    sweep_failures,
    write_env,
)
from diffusion.runs.load import control_images, not_a_run
from diffusion.runs.lock import WriterLock
from diffusion.runtime import distributed as dist
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.sampling.sampler import SamplerSpec
from diffusion.training.batches import check_batch
from diffusion.training.loggers import truncate_metrics
from diffusion.training.reflow import PairDataset
from diffusion.training.trainer import Trainer

log = logging.getLogger("diffusion.train")

CPU_HINT = ("This recipe is sized for a GPU. On a CPU, python -m diffusion.train "
            "experiment=mnist_cpu (what make train picks without a GPU) shows digits in about "
            "25 minutes on two cores; or add trainer.max_minutes=N to stop this run with a "
            "checkpoint after N minutes (resume=<run folder> continues it).")


def train(cfg: DictConfig, run_dir: Path, progress: dict | None = None) -> dict:
    """Train from a composed config into ``run_dir``, holding its writer lock (rank 0, which
    writes it); returns the trainer's summary. See ``_train``."""
    with WriterLock(run_dir) if dist.is_main() else contextlib.nullcontext():
        return _train(cfg, run_dir, progress)


def _train(cfg: DictConfig, run_dir: Path, progress: dict | None = None) -> dict:
    """Train from a composed config into ``run_dir``; returns the trainer's summary.

    Everything is checked, and a resume's checkpoint loaded, before the run folder is
    written to, so a rejected command or a failed resume leaves the folder as it was.
    ``progress["started"]`` is set once training begins.
    """
    progress = {} if progress is None else progress
    check_config(cfg)
    resuming = cfg.resume is not None
    resume = None
    if resuming:
        try:
            resume = check_resume(run_dir, cfg)
        except NothingToDo as done:
            log.info("%s", done)
            summary = run_dir / "summary.json"
            return json.loads(summary.read_text()) if summary.is_file() else {}
    resolve_init_from(cfg)
    prepare_finetune(cfg, resuming)
    trainer_cfg = build_trainer_config(cfg)
    local_rank = dist.init_from_env()
    if dist.world_size() > 1 and trainer_cfg.device == "auto" and torch.cuda.is_available():
        trainer_cfg.device = f"cuda:{local_rank}"
    evaluator = None
    if trainer_cfg.eval_every:  # a periodic small FID; every rank samples a share
        evaluator = build_evaluator(cfg, device=trainer_cfg.device)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = finetune_model(cfg, build_model(cfg, checkpoint_follows=resume is not None))
    if resume is None and cfg.model.get("pretrained") and hasattr(model, "unet_config"):
        with open_dict(cfg.model):  # the run then loads without the pretrained folder
            cfg.model.unet_config = model.unet_config()
    scheduler = build_scheduler(cfg)
    seed_everything(cfg.seed + dist.rank())  # then per-rank streams (dropout, workers)
    train_set, val_set = build_datasets(cfg.data)
    latent = None
    if cfg.get("latent_space"):  # latent=: the images' latents, encoded once and cached
        train_set, val_set, latent = latent_data(cfg, train_set, val_set,
                                                 resolve_device(trainer_cfg.device))
    scheduler = fit_to_data(cfg, scheduler, train_set)
    pairs = cfg.get("pairs")
    if pairs and latent is not None:
        raise ConfigError("pairs= (reflow) trains on images, and this run is in a latent "
                          "space: reflow a pixel-space run.")
    if pairs and cfg.model.get("num_classes") is not None:
        raise ConfigError("pairs= holds unlabelled (noise, image) pairs, so it trains an "
                          "unconditional model: reflow a run without conditioning=class.")
    if pairs:  # reflow: (noise, image) pairs in place of the images, validated on the data
        train_set = PairDataset(pairs, like=train_set)
    check_batch(len(train_set), cfg.data.batch_size, dist.world_size())  # before any write
    main_rank = dist.is_main()
    trainer = Trainer(
        model, scheduler, build_optimizer(cfg), train_set, trainer_cfg,
        batch_size=cfg.data.batch_size, run_dir=run_dir, val_set=val_set,
        lr_scheduler=build_lr_scheduler(cfg),
        seed=cfg.seed, num_workers=0 if pairs else cfg.data.num_workers,
        conditional=cfg.model.get("num_classes") is not None,
        on_device=cfg.data.on_device and not pairs, evaluator=evaluator,
        sampler=build_training_sampler(cfg), objective=build_objective(cfg, scheduler),
        latent=latent, low_res=build_low_res(cfg),
        control=control_images(OmegaConf.to_container(cfg, resolve=True)))
    if resume is not None:
        trainer.resume(resume.checkpoint)
    elif trainer_cfg.init_from and uses_init_weights(cfg):
        trainer.init_weights(trainer_cfg.init_from)
    trainer.eta_hint = CPU_HINT
    if main_rank:  # from here on the run folder changes
        _record_start(cfg, run_dir, trainer.device, resume)
    logger = build_logger(cfg, run_dir, resuming) if main_rank else None
    if logger is not None:
        trainer.logger.loggers.append(logger)
        logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        log.info("Run folder: %s", run_dir)
        progress["started"] = True
        summary = trainer.fit()
    finally:
        trainer.logger.finish()
    if main_rank:
        print(finished_message(run_dir, cfg, trainer.device))
    return summary


def finished_message(run_dir: Path, cfg: DictConfig, device: torch.device) -> str:
    """What a finished run prints: its folder, its newest grid, and the commands that sample
    from and score it with the sampler its grids used (1,000 images on a CPU: minutes, not
    the hour 10,000 take there)."""
    try:
        shown = run_dir.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = run_dir
    lines = [f"Run folder: {shown}"]
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        lines.append(f"Newest grid: {shown / 'samples' / grids[-1].name}")
    spec = SamplerSpec.of_run(cfg)
    steps = "null" if spec.steps is None else spec.steps  # null: every training step
    sampler = f"sampler={spec.name} sampler.steps={steps}"
    n = " n=1000" if device.type == "cpu" else ""
    lines += [f"Sample from it: python -m diffusion.sample run={shown} {sampler} n=64",
              f"Score it (FID): python -m diffusion.evaluate run={shown} {sampler}{n}"]
    return "\n".join(lines)


def _record_start(cfg: DictConfig, run_dir: Path, device: torch.device, resume) -> None:
    """``config.yaml`` (what resume and sampling read) and ``env.json``; a resume appends
    its command and the settings it changed to ``resumes.jsonl``, and drops the records past
    its checkpoint's step (the steps it trains again)."""
    if resume is not None:
        truncate_metrics(run_dir / "metrics.jsonl", resume.step)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if resume is not None:
        append_resume(run_dir, resume.checkpoint, resume.step, resume.changes)
        if resume.changes:
            log.info("Resuming with changed settings: %s", ", ".join(
                f"{k}: {old!r} -> {new!r}" for k, (old, new) in resume.changes.items()))
    write_env(run_dir, cfg.seed, device, resumed=resume is not None, extra=_job_record())


def _job_record() -> dict:
    """What ``env.json`` adds to the process's command: the run a rerun repeats, and a sweep
    job's (or a rerun's) own command, which repeats this one job alone."""
    if not HydraConfig.initialized():
        return {}  # called as a function, not through the command line
    hydra_cfg = HydraConfig.get()
    source = next((Path(s.path) for s in hydra_cfg.runtime.config_sources
                   if s.provider == "main"), None)
    rerun_of = (source if source is not None and hydra_cfg.job.config_name == "config"
                and not any(o.startswith("resume=") and o != "resume=null"
                            for o in hydra_cfg.overrides.task) else None)
    if rerun_of is None and hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    words = [f"rerun={rerun_of}"] if rerun_of is not None else []
    words += [o for o in hydra_cfg.overrides.task if o != "resume=null"]
    record = {"job_command": shlex.join(["python", "-m", "diffusion.train", *words])}
    return {**record, "rerun_of": str(rerun_of)} if rerun_of is not None else record


def _main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if dist.launched_by_torchrun():  # every rank works in rank 0's run folder
        dist.init_from_env()
        run_dir = Path(dist.broadcast_object(str(run_dir)))
    progress: dict = {}
    resuming = cfg.resume is not None
    try:
        summary = train(cfg, run_dir, progress)
        signal_name = summary.get("interrupted")
        if dist.is_main() and (progress.get("started") or not resuming):
            record_end(run_dir, None, started=True, resuming=resuming, multirun=multirun,
                       interrupted=signal_name)
        if signal_name:
            _stopped_by_signal(run_dir, summary["step"], signal_name)
        return summary
    except KeyboardInterrupt:  # a second signal, or one before training began: at once
        if dist.is_main():
            record_end(run_dir, None, started=bool(progress.get("started")),
                       resuming=resuming, multirun=multirun, interrupted="SIGINT")
        raise
    except (*USER_ERRORS, Exception) as exc:
        if dist.is_main():
            record_end(run_dir, exc, started=bool(progress.get("started")),
                        resuming=resuming, multirun=multirun)
            if resuming and not progress.get("started"):
                _drop_new_logs()
        if multirun:  # one failed job must not end the sweep; main() reports it at the end
            log.error("Job %s failed: %s", hydra_cfg.job.num, exc,
                      exc_info=not isinstance(exc, USER_ERRORS))
            return None
        if isinstance(exc, USER_ERRORS):
            fail(exc)
        raise
    finally:
        dist.shutdown()


_NEW_LOGS: set[Path] = set()
"""Log files a resume's launch will create (Hydra opens them before the job): a resume that
is refused once Hydra has started removes them again, so the run stays as it was."""


def _drop_new_logs() -> None:
    for path in _NEW_LOGS:
        for handler in logging.getLogger().handlers:  # Hydra's file handler holds it open
            if getattr(handler, "baseFilename", None) == str(path.absolute()):
                handler.close()
                logging.getLogger().removeHandler(handler)
        path.unlink(missing_ok=True)


def _stopped_by_signal(run_dir: Path, step: int, signal_name: str) -> None:
    """A launch a stop signal ended (with a checkpoint at ``step``): one line with the
    command that continues it, and the conventional exit status 128 + the signal's number."""
    if dist.is_main():
        print(f"{signal_name}: stopped at step {step} with a checkpoint; continue with "
              f"python -m diffusion.train resume={run_dir}", file=sys.stderr)
    raise SystemExit(128 + signal.Signals[signal_name])


NO_JOB_OPTIONS = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve",
                  "package", "experimental_rerun")
"""Hydra's options (as its parser names them) of a command that starts no new job."""


def _read_command_line(argv: list[str]) -> argparse.Namespace:
    """The command line as ``hydra.main`` reads it: with Hydra's own parser, so that every
    spelling of a flag (``--config-dir X``, ``-cd=X``) reads the same here; a command it
    cannot read ends here with Hydra's usage message. Flags may come anywhere among the
    overrides (``_prepare`` hands them on to Hydra first)."""
    return get_args_parser().parse_intermixed_args(argv)


def _flags(options: argparse.Namespace, resume: bool) -> list[str]:
    """The flags to hand on to Hydra (before the overrides, where its parser wants them).
    A resume composes from the run's own config, so drops ``--config-path``/``-name``."""
    flags = ["--multirun"] if options.multirun else []
    flags += ["--run"] if options.run else []
    named = [("--config-dir", options.config_dir)]
    if not resume:
        named += [("--config-path", options.config_path), ("--config-name", options.config_name)]
    return flags + [f"{flag}={value}" for flag, value in named if value is not None]


def _primary_config(options: argparse.Namespace) -> tuple[Path, str]:
    """The folder and name of the primary config, as ``hydra.main`` finds them: the
    package's ``train`` unless ``--config-path`` (relative to this file's folder) or
    ``--config-name`` says otherwise."""
    name = options.config_name or "train"
    if options.config_path is None:
        return CONF_DIR, name
    if "://" in options.config_path:
        raise ConfigError(f"--config-path {options.config_path}: pass a folder; or keep the "
                          "package's configs and add yours with --config-dir <folder>.")
    return Path(__file__).resolve().parent / options.config_path, name


def _prepare(options: argparse.Namespace) -> tuple[list[str], str, str, Path | None]:
    """Check every job of the command and create its run (or sweep) folder; returns the
    argv to hand to Hydra, its config path and name, and the sweep folder of a multirun.
    Configs are found where Hydra will find them: ``--config-dir``, ``--config-path``,
    ``--config-name`` and ``hydra.searchpath=[...]`` count for the checks too."""
    multirun = options.multirun
    overrides = list(options.overrides)
    check_launcher(overrides)  # before any folder is made
    rerun = next((a.split("=", 1)[1] for a in overrides if a.startswith("rerun=")), None)
    if rerun is not None:
        return _prepare_rerun(options, rerun)
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), None)
    plain = [a for a in overrides if not a.startswith("resume=")]
    job_args = [a for a in plain if not preflight.is_hydra_key(a)]
    if resume:
        run = Path(resume).resolve()
        if not (run / "config.yaml").is_file():
            raise not_a_run(resume, "resume")
        if multirun:
            raise ConfigError("resume= continues one run and cannot be swept: drop -m.")
        moved = next((a for a in plain if a.split("=", 1)[0] in ("hydra.run.dir",
                                                                  "hydra.sweep.dir")), None)
        if moved:
            raise ConfigError(f"resume= continues the run in its own folder, so {moved} does "
                              "not apply: drop it (copy the run folder to continue elsewhere).")
        config_path, config_name = str(run), "config"
        preflight.check_resume_overrides(run, job_args)
        jobs = preflight.check_jobs(run, "config", [*job_args, f"resume={run}"], False)
        preflight.check_resume(run, jobs[0].cfg)
        WriterLock(run).acquire()  # held until this process ends: one writer per run
        _NEW_LOGS.update(p for p in (run / "train.log",) if not p.exists())
        return ([*_flags(options, resume=True), *plain, f"resume={run}", f"hydra.run.dir={run}",
                 "hydra.output_subdir=null"], config_path, config_name, None)
    config_dir, config_name = _primary_config(options)
    searchpath = [a for a in plain if preflight.is_searchpath(a)]
    extra_dir = Path(options.config_dir) if options.config_dir is not None else None
    jobs = preflight.check_jobs(config_dir, config_name, [*searchpath, *job_args], multirun,
                                extra_dir)
    argv = [*_flags(options, resume=False), *plain]
    worker = dist.launched_by_torchrun() and int(os.environ.get("RANK", 0)) > 0
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    explicit = next((a.split("=", 1)[1] for a in plain if a.startswith(key)), None)
    if worker:  # ranks > 0 write nothing of their own: rank 0's folder is broadcast to them
        scratch = tempfile.mkdtemp(prefix=f"diffusion-rank{os.environ['RANK']}-")
        return ([*argv, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"],
                str(CONF_DIR), "train", None)
    if explicit is not None:
        folder = Path(explicit)
        if not multirun:  # one writer: a second run given the same folder stops here
            WriterLock(folder).acquire()
        if not multirun and (folder / "config.yaml").is_file():
            raise RunError(f"hydra.run.dir={explicit} already holds a run: continue it with "
                           f"resume={explicit}, or choose another folder.")
        return argv, str(CONF_DIR), "train", folder if multirun else None
    folder = create_run_dir(jobs[0].sweep_dir if multirun else jobs[0].run_dir)
    return [*argv, f"{key}{folder}"], str(CONF_DIR), "train", folder if multirun else None


def _prepare_rerun(options: argparse.Namespace, rerun: str
                   ) -> tuple[list[str], str, str, Path | None]:
    """``rerun=<run>``: train again from the run's own ``config.yaml`` (with this command's
    single-key overrides, e.g. ``seed=1``; ``-m`` sweeps them) into a new run folder under
    ``paths.runs_dir``, as ``_prepare`` returns it. The same config on the same machine gives
    the same losses and weights."""
    run = Path(rerun).resolve()
    if not (run / "config.yaml").is_file():
        raise not_a_run(rerun, "rerun")
    plain = [a for a in options.overrides if not a.startswith("rerun=")]
    if any(a.startswith("resume=") for a in plain):
        raise ConfigError("rerun= trains a run again from its start into a new folder and "
                          "resume= continues one: pass one of them.")
    job_args = [a for a in plain if not preflight.is_hydra_key(a)]
    preflight.check_resume_overrides(run, job_args, key="rerun")
    saved = run_config(run, "rerun")
    reset = ["resume=null"] if "resume" in saved else []
    jobs = preflight.check_jobs(run, "config", [*job_args, *reset], options.multirun)
    key = "hydra.sweep.dir=" if options.multirun else "hydra.run.dir="
    explicit = next((a.split("=", 1)[1] for a in plain if a.startswith(key)), None)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = Path(str(jobs[0].cfg.paths.runs_dir))
    folder = Path(explicit) if explicit is not None else create_run_dir(
        runs_dir / "multirun" / stamp if options.multirun else runs_dir / jobs[0].cfg.name / stamp)
    if not options.multirun:
        WriterLock(folder).acquire()
        if (folder / "config.yaml").is_file():
            raise RunError(f"hydra.run.dir={folder} already holds a run: choose another folder.")
    argv = [*_flags(options, resume=True), *[a for a in plain if not a.startswith(key)], *reset,
            f"{key}{folder}"]
    return argv, str(run), "config", folder if options.multirun else None


def main() -> None:
    """Hydra entry point; ``resume=<run>`` composes from that run's own saved config."""
    argv = sys.argv[1:]
    options = _read_command_line(argv)
    if any(getattr(options, name) for name in NO_JOB_OPTIONS):
        config_path, config_name = str(CONF_DIR), "train"  # --help, --cfg: nothing runs
        sweep_dir = None
    else:
        try:
            argv, config_path, config_name, sweep_dir = guarded(_prepare, options)
        except preflight.NothingToDo as done:
            print(done)
            return
    launch(config_name, _main, argv=argv, config_dir=config_path, distributed=False)
    if sweep_dir is not None:
        jobs = len(preflight.split_jobs(
            [a for a in options.overrides if not preflight.is_hydra_key(a)], True))
        failures = sweep_failures(sweep_dir, jobs)
        if failures:
            fail(failures)


if __name__ == "__main__":
    main()
