"""``python -m diffusion.reflow run=<flow-matching run> pairs=N``: one reflow (Liu et al.
2023, "Flow Straight and Fast"), in three resumable parts under ``out`` (default
``<run>-reflow`` beside the run):

1. ``pairs/``: N (noise, image) pairs, each image the run's deterministic ODE (``sampler``,
   default ``flow_heun``) started from its noise (``diffusion.training.reflow.make_pairs``:
   shards, each from its own seeded stream; a shard on disk is kept);
2. the new run, in ``out`` itself: ``python -m diffusion.train rerun=<run>`` with
   ``pairs=<out>/pairs`` (every image noised with its own noise) and
   ``trainer.init_from=<the checkpoint>`` (the first flow's EMA weights), the first run's
   settings otherwise, ``train=[...]`` overriding them; a second call resumes it;
3. ``straightness.json``: Liu et al.'s straightness of both models' paths from the same
   ``straightness_n`` noises (``diffusion.metrics.straightness``), and what the pairs cost.

Every option, the run, the new run's composed config and the output folder are checked
before the first pair is drawn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_int, check_writable
from diffusion.commands.launcher import launch
from diffusion.config import preflight
from diffusion.config.build import build_scheduler
from diffusion.config.options import check_run_options
from diffusion.errors import ConfigError, RunError
from diffusion.metrics.straightness import pipeline_velocity, straightness
from diffusion.processes.straight import FlowProcess
from diffusion.runs.load import newest_checkpoint
from diffusion.sampling.pipeline import DiffusionPipeline, chunk_seed
from diffusion.sampling.sampler import SamplerSpec
from diffusion.training.reflow import make_pairs, pairs_cost

STRAIGHTNESS_STREAM = -1
"""The chunk index of the straightness's noise stream (``chunk_seed(seed, -1)``): no shard's."""


def check_reflow_config(cfg: DictConfig) -> tuple[Path, Path, Path, SamplerSpec, list[str]]:
    """(the run, its checkpoint, the output folder, the pairs' sampler, the new run's training
    overrides), every option checked before the model is loaded."""
    options = check_run_options(cfg, "reflow", pairs=cfg.pairs, shard_size=cfg.shard_size)
    spec, run_cfg = options.spec, options.run_cfg
    run = Path(cfg.run)
    if not isinstance(build_scheduler(run_cfg), FlowProcess):
        raise ConfigError(f"run={run} was trained with scheduler="
                          f"{run_cfg.scheduler.get('_target_', '?').rsplit('.', 1)[-1]}; reflow "
                          "straightens flow matching's paths: pass a run trained with "
                          "scheduler=flow objective=flow.")
    if run_cfg.get("latent_space"):
        raise ConfigError(f"run={run} is a latent run; reflow pairs noise with images, so it "
                          "reflows pixel-space runs.")
    if run_cfg.model.get("num_classes") is not None:
        raise ConfigError(f"run={run} is class-conditional; reflow's pairs carry no labels, so "
                          "it reflows unconditional runs only.")
    # a stochastic sampler never gets here: over a flow process only the velocity samplers
    # build (check_run_options), and make_pairs refuses one over any other process
    check_int("seed", cfg.seed, minimum=None)
    check_int("straightness_n", cfg.straightness_n, minimum=0, note=" (0: skip)")
    check_int("straightness_steps", cfg.straightness_steps)
    if not OmegaConf.is_list(cfg.train) or not all(isinstance(o, str) and "=" in o
                                                    for o in cfg.train):
        raise ConfigError(f"train must be a list of key=value overrides; pass them as words, "
                          f"e.g. train.trainer.max_steps=4000; got {cfg.train!r}.")
    train = [str(o) for o in cfg.train]
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(run)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint={checkpoint} is not a file: pass one of "
                          f"{run / 'checkpoints'}/step_*.pt, or leave it null for the newest.")
    out = Path(cfg.out) if cfg.out else run.parent / f"{run.name}-reflow"
    check_writable(out / "pairs" / "pairs_00000.pt",
                   "pass out=<folder> in a place you can write")
    if not (out / "config.yaml").is_file():  # the new run's config composes and checks
        preflight.check_resume_overrides(run, train, key="rerun")
        preflight.check_jobs(run, "config", [*train, *_new_run(out, checkpoint)], False)
    return run, checkpoint, out, spec, train


def _new_run(out: Path, checkpoint: Path) -> list[str]:
    """The overrides that make a rerun of the first run the next rectified flow."""
    return [f"++pairs={out.resolve() / 'pairs'}", f"++trainer.init_from={checkpoint.resolve()}"]


def _straightness(pipe: DiffusionPipeline, cfg: DictConfig) -> dict | None:
    """Liu et al.'s straightness of ``pipe``'s paths from the command's fixed noise."""
    if not cfg.straightness_n:
        return None
    noise = torch.randn((cfg.straightness_n, *pipe.sample_shape), generator=torch.Generator(
        ).manual_seed(chunk_seed(cfg.seed, STRAIGHTNESS_STREAM)))
    measured = straightness(pipeline_velocity(pipe), pipe.scheduler, noise,
                            steps=cfg.straightness_steps)
    print(measured)
    return {"value": measured.value, "stderr": measured.stderr, "n": measured.n,
            "steps": measured.steps}


def _train(run: Path, out: Path, checkpoint: Path, train: list[str]) -> None:
    """Train (or continue) the next rectified flow in ``out`` in a process of its own."""
    args = ([f"resume={out}", *train] if (out / "config.yaml").is_file()
            else [f"rerun={run}", *train, *_new_run(out, checkpoint), f"hydra.run.dir={out}"])
    print("python -m diffusion.train " + " ".join(args), flush=True)
    code = subprocess.run([sys.executable, "-m", "diffusion.train", *args], check=False).returncode
    if code:
        raise RunError(f"training the rectified flow in {out} stopped (exit status {code}, "
                       "said above): fix that and run the same diffusion.reflow command again, "
                       "which keeps the pairs and continues the run.")


def reflow(cfg: DictConfig) -> dict:
    """One reflow as ``cfg`` says; returns what ``straightness.json`` holds."""
    run, checkpoint, out, spec, train = check_reflow_config(cfg)
    record_path = out / "straightness.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    pipe = DiffusionPipeline.from_run(run, checkpoint=checkpoint, device=cfg.device,
                                      precision=cfg.precision, sampler=spec)
    shards = make_pairs(pipe, cfg.pairs, out / "pairs", spec=spec, shard_size=cfg.shard_size,
                        seed=cfg.seed, checkpoint=str(checkpoint.resolve()), progress=True)
    record["pairs"] = {**pairs_cost(shards), "sampler": spec.name, "steps": spec.steps,
                       "checkpoint": str(checkpoint.resolve())}
    print(f"{len(shards)} shards of pairs in {out / 'pairs'}: {record['pairs']['seconds']:.0f} s "
          f"of sampling at {record['pairs']['nfe']} NFE")
    if "before" not in record:
        record["before"] = _straightness(pipe, cfg)
    del pipe
    _write(record_path, record)
    _train(run, out, checkpoint, train)
    after = DiffusionPipeline.from_run(out, device=cfg.device, precision=cfg.precision,
                                       sampler=spec)
    record["after"] = _straightness(after, cfg)
    _write(record_path, record)
    print(f"The rectified flow: {out}; straightness before and after: {record_path}")
    return record


def _write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2) + "\n")


def _train_words(argv: list[str]) -> list[str]:
    """``train.trainer.max_steps=4000 train.optimizer.lr=2e-4`` -> one
    ``train=["trainer.max_steps=4000","optimizer.lr=2e-4"]`` (Hydra's grammar wants the
    quotes, which the shell would otherwise need); an explicit ``train=[...]`` with them is
    refused in one sentence."""
    words, rest = [], []
    for arg in argv:
        key, eq, value = arg.partition("=")
        stripped = key.lstrip("+")
        if eq and stripped.startswith("train."):
            inner = key[: len(key) - len(stripped)] + stripped[len("train."):]
            words.append(f"{inner}={value}")
        else:
            rest.append(arg)
    if not words:
        return argv
    if any(a.partition("=")[0] == "train" for a in rest):
        raise ConfigError("pass the new run's overrides either as train.<key>=<value> words or "
                          "as one train=[...] list, not both.")
    quoted = ",".join('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words)
    return [*rest, f"train=[{quoted}]"]


def main() -> None:
    """``python -m diffusion.reflow ...``; see the module docstring."""
    launch("reflow", reflow, rewrite=_train_words, distributed=False)


if __name__ == "__main__":
    main()
