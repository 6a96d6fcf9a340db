"""What the commands that train a network beside diffusion runs share: a noise-aware classifier
(``diffusion.train_classifier``) and the autoencoder of latent diffusion
(``diffusion.train_autoencoder``). Each writes its own run folder, records how it ended
(``status.json``), stops on Ctrl-C (or SIGTERM, SIGUSR1) after the step it is in with a
checkpoint there, and continues exactly with ``resume=<folder> [steps=N]``, where only
``resume_keys`` may change.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffusion.commands.launcher import guarded, launch
from diffusion.errors import USER_ERRORS, ConfigError, RunError
from diffusion.runs.folder import record_end
from diffusion.runs.load import newest_checkpoint, read_config
from diffusion.runs.lock import WriterLock
from diffusion.training import checkpoint as ckpt


class _Finished(Exception):
    """A resume with no steps left."""


@dataclass(frozen=True)
class SideCommand:
    """``python -m diffusion.<name>``: ``train(cfg, run_dir, progress)`` trains into a run
    folder whose config holds ``marker`` (the key that tells its folders from others');
    ``what`` names the network in sentences; ``other_kind(run)`` is the sentence for a
    ``resume=`` folder without ``marker``."""

    name: str
    what: str
    marker: str
    resume_keys: tuple[str, ...]
    train: Callable[[DictConfig, Path, dict], dict]
    other_kind: Callable[[str], str]

    def work(self, cfg: DictConfig) -> None:
        """The Hydra job: train, record how it ended, and exit 128 + the signal's number
        when a signal stopped it."""
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        multirun, resuming = hydra_cfg.mode == RunMode.MULTIRUN, bool(cfg.get("resume"))
        progress: dict = {}
        try:
            summary = self.train(cfg, run_dir, progress)
        except KeyboardInterrupt:  # a second signal, or one before training began
            record_end(run_dir, None, started=bool(progress.get("started")),
                       resuming=resuming, multirun=multirun, interrupted="SIGINT")
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
                  f"checkpoint; continue with python -m diffusion.{self.name} "
                  f"resume={run_dir}", file=sys.stderr)
            raise SystemExit(128 + signal.Signals[name])

    def prepare_resume(self, run_arg: str, overrides: list[str]) -> list[str]:
        """The Hydra command line that continues run ``run_arg``: composed from its own
        config.yaml, in its own folder, with only ``resume_keys`` changed; its writer lock is
        taken here and held until the process ends."""
        run = Path(run_arg).resolve()
        cfg = read_config(run, key="resume")
        if self.marker not in cfg:
            raise RunError(self.other_kind(run_arg))
        for override in overrides:
            key = override.split("=", 1)[0]
            if key.lstrip("+~") not in self.resume_keys or key != key.lstrip("+~"):
                raise ConfigError(
                    f"{override}: a resume continues the {self.what} as it was trained, so "
                    f"only {', '.join(self.resume_keys)} may change: drop it, or train a new "
                    f"{self.what}.")
        step = ckpt.step_of(newest_checkpoint(  # read (and checked) once, by the trainer
            run, f"it stopped before its first checkpoint; train a new {self.what}"))
        steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("steps=")
                      and o.split("=", 1)[1].isdigit()), cfg["steps"])
        if step >= steps:
            raise _Finished(f"{self.what.capitalize()} run {run_arg} is trained to step {step} "
                            f"already (steps={steps}): pass steps=<more> to train it longer.")
        WriterLock(run).acquire()  # one writer: held until this process ends
        key = "resume" if "resume" in cfg else "+resume"
        return [*overrides, f"{key}={run}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]

    def main(self) -> None:
        """``python -m diffusion.<name> ...``: a new run, or ``resume=<folder>``."""
        argv = sys.argv[1:]
        resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
        if not resume:
            launch(self.name, self.work, distributed=False)
            return
        overrides = [a for a in argv if not a.startswith("resume=")]
        try:
            argv = guarded(self.prepare_resume, resume, overrides)
        except _Finished as done:
            print(done)
            return
        launch("config", self.work, argv=argv, config_dir=Path(resume).resolve(),
               distributed=False)
