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
import signal
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_writable
from diffusion.commands.launcher import guarded, launch
from diffusion.config.build import build_classifier, build_datasets, build_scheduler
from diffusion.config.options import check_classifier_options
from diffusion.data.datasets import data_key
from diffusion.errors import USER_ERRORS, ConfigError, RunError
from diffusion.runs.folder import record_end, write_env
from diffusion.runs.load import newest_checkpoint, read_config
from diffusion.runs.lock import WriterLock
from diffusion.runtime.device import resolve_device
from diffusion.runtime.seed import seed_everything
from diffusion.training import checkpoint as ckpt
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


def _work(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun, resuming = hydra_cfg.mode == RunMode.MULTIRUN, bool(cfg.get("resume"))
    progress: dict = {}
    try:
        summary = train_classifier(cfg, run_dir, progress)
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
              f"checkpoint; continue with python -m diffusion.train_classifier "
              f"resume={run_dir}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name])


class _Finished(Exception):
    """A resume with no steps left."""


def _prepare_resume(run_arg: str, overrides: list[str]) -> list[str]:
    """The Hydra command line that continues classifier run ``run_arg``: composed from its own
    config.yaml, in its own folder, with only ``RESUME_KEYS`` changed; its writer lock is
    taken here and held until the process ends."""
    run = Path(run_arg).resolve()
    cfg = read_config(run, key="resume")
    if "classifier_net" not in cfg:
        raise RunError(f"resume={run_arg} is a diffusion run, not a classifier run: continue "
                       f"it with python -m diffusion.train resume={run_arg}.")
    for override in overrides:
        key = override.split("=", 1)[0]
        if key.lstrip("+~") not in RESUME_KEYS or key != key.lstrip("+~"):
            raise ConfigError(
                f"{override}: a resume continues the classifier as it was trained, so only "
                f"{', '.join(RESUME_KEYS)} may change: drop it, or train a new classifier.")
    step = ckpt.step_of(newest_checkpoint(  # read (and checked) once, by the trainer
        run, "it stopped before its first checkpoint; train a new classifier"))
    steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("steps=")
                  and o.split("=", 1)[1].isdigit()), cfg["steps"])
    if step >= steps:
        raise _Finished(f"Classifier run {run_arg} is trained to step {step} already "
                        f"(steps={steps}): pass steps=<more> to train it longer.")
    WriterLock(run).acquire()  # one writer: held until this process ends
    key = "resume" if "resume" in cfg else "+resume"
    return [*overrides, f"{key}={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]


def main() -> None:
    """``python -m diffusion.train_classifier ...``; see the module docstring."""
    argv = sys.argv[1:]
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if not resume:
        launch("train_classifier", _work, distributed=False)
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
