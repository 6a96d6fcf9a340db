"""``python -m diffusion.evaluate run=<run folder> n=10000 sampler=ddim steps=10,20,50,100``

Samples ``n`` images from the run's EMA weights for each step count, scores them with FID and
KID against the dataset's test split (``diffusion.metrics``), prints each score with its
protocol and the data floor, merges the results into ``<run>/eval.json`` (keyed by the whole
protocol, ``entry_key``, each with the command that repeats it), appends them to
``<run>/metrics.jsonl`` and plots FID against sampling steps (``<run>/figures/fid_vs_steps.png``).

``build_evaluator(cfg)`` gives the trainer the same measurement as a periodic small FID.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusion import distributed as dist
from diffusion.cli import CONF_DIR, USER_ERRORS, fail
from diffusion.metrics import DataRef, FeatureNetworkError, FidEvaluator, FidResult, FidScorer
from diffusion.sampling_args import (
    check_bool,
    check_cli_config,
    check_int,
    check_overrides,
    check_sampling,
    check_writable,
    is_int,
    is_stochastic,
)
from diffusion.training.config import ConfigError

FEATURES = ("domain", "inception")


def feature_network(metrics: DictConfig, data: DataRef, device: str | torch.device = "cpu",
                    progress: bool = True):
    """The feature module ``metrics.features`` names, on ``device``."""
    from diffusion.metrics import InceptionFeatures, load_feature_network

    if metrics.features == "inception":
        return InceptionFeatures(metrics.get("inception_weights")).to(device)
    if metrics.features != "domain":
        raise ConfigError(f"metrics.features must be one of {', '.join(FEATURES)}; "
                          f"got {metrics.features!r}.")
    return load_feature_network(data.dataset, root=data.root, image_size=data.image_size,
                                center_crop=data.center_crop, cache_dir=metrics.get("cache_dir"),
                                progress=progress, device=device,
                                epochs=metrics.get("feature_epochs"))


def build_scorer(metrics: DictConfig, data: DictConfig, device: str | torch.device = "cpu",
                 progress: bool = False, root: str | None = None) -> FidScorer:
    """A ``FidScorer`` for the data a run trains on, as ``metrics`` (conf/metrics) says."""
    ref = DataRef(dataset=data.name, root=root or data.get("root"),
                  image_size=data.get("image_size"), center_crop=bool(data.get("center_crop")))
    with dist.main_first():  # rank 0 trains or extracts and caches; the others read the cache
        features = feature_network(metrics, ref, device, progress=dist.is_main())
        if getattr(features, "accuracy", None) is not None and dist.is_main():
            print(f"Feature network {features.feature_id}: test accuracy "
                  f"{100 * features.accuracy:.2f}%", flush=True)
        return FidScorer(features, ref, reference_n=metrics.get("reference_n"), kid=metrics.kid,
                         kid_subset_size=metrics.kid_subset_size, batch_size=metrics.batch_size,
                         seed=metrics.seed, cache_dir=metrics.get("cache_dir"),
                         progress=progress and dist.is_main())


def build_evaluator(cfg: DictConfig, device: str | torch.device | None = None) -> FidEvaluator:
    """The trainer's periodic FID (``trainer.eval_every``) from a training config: ``n``
    samples with ``metrics.sampler``/``metrics.steps``; the trainer keeps the best as best.pt."""
    from hydra.utils import instantiate

    from diffusion.device import resolve_device

    metrics = cfg.get("metrics")
    if metrics is None:
        raise ConfigError("trainer.eval_every needs a metrics config: add metrics=fid (this run "
                          "was made before metrics existed) or set trainer.eval_every=0.")
    try:  # before the feature network is trained or loaded
        check_sampling(metrics.sampler, metrics.steps, 0.0,
                       instantiate(cfg.scheduler).num_train_timesteps,
                       batch_size=metrics.batch_size, prefix="metrics.")
        check_int("metrics.n", metrics.n, minimum=2)
        check_metrics(metrics)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    scorer = build_scorer(metrics, cfg.data,
                          device=resolve_device(device or cfg.trainer.device))
    return FidEvaluator(scorer, n=metrics.n, sampler=metrics.sampler, steps=metrics.steps,
                        batch_size=metrics.batch_size)


# ---------------------------------------------------------------------------------------------
# Evaluating a run folder
# ---------------------------------------------------------------------------------------------


def check_metrics(metrics: DictConfig) -> None:
    """The ``metrics.*`` settings (conf/metrics/fid.yaml), before any feature network work."""
    if metrics.features not in FEATURES:
        raise ConfigError(f"metrics.features must be one of {', '.join(FEATURES)}; "
                          f"got {metrics.features!r}.")
    check_int("metrics.batch_size", metrics.batch_size)
    check_int("metrics.kid_subset_size", metrics.kid_subset_size)
    check_bool("metrics.kid", metrics.kid)
    if not is_int(metrics.seed):
        raise ConfigError(f"metrics.seed must be an integer; got {metrics.seed!r}.")
    if metrics.get("reference_n") is not None:
        check_int("metrics.reference_n", metrics.reference_n, minimum=2)
    if metrics.get("feature_epochs") is not None:
        check_int("metrics.feature_epochs", metrics.feature_epochs)


#: What makes two evaluations of a run comparable; an eval.json key holds all of it.
PROTOCOL = ("sampler", "steps", "n", "eta", "batch_size", "seed", "checkpoint", "step",
            "feature_id", "reference_n")


def entry_key(entry: dict) -> str:
    """``sampler=ddim steps=50 n=10000 eta=0.0 seed=0 checkpoint=... step=... feature_id=...
    reference_n=...``: the whole protocol, so evaluations that differ in any part of it
    (eta, checkpoint, seed, ...) are kept side by side instead of overwriting each other.
    ``batch_size`` is part of it only for stochastic samplers (ddpm, euler_a, dpmpp_2m_sde,
    ddim with eta > 0), whose step noise is drawn batch by batch; a deterministic sampler
    ignores it."""
    stochastic = is_stochastic(entry["sampler"], entry["eta"])
    return " ".join(f"{k}={entry[k]}" for k in PROTOCOL if k != "batch_size" or stochastic)


def read_eval(run: str | Path) -> dict[str, dict]:
    """The entries of ``<run>/eval.json`` ({} when the run was never evaluated); entries
    written before keys held the whole protocol keep their ``<sampler>-<steps>-n<n>`` key."""
    path = Path(run) / "eval.json"
    return json.loads(path.read_text()).get("entries", {}) if path.is_file() else {}


def write_eval(run: str | Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``<run>/eval.json`` (same key: the newer result wins)."""
    path = Path(run) / "eval.json"
    merged = {**read_eval(run), **entries}
    tmp = path.with_name(f".eval.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"entries": dict(sorted(merged.items()))}, indent=2) + "\n")
    tmp.replace(path)
    return path


def plot_entries(entries: list[dict], current: dict) -> list[dict]:
    """The entries one FID-vs-steps plot can show beside ``current``: the same checkpoint
    and feature network, and for each (sampler, n, steps) only the newest, so results that
    differ in eta or seed do not zigzag along one line."""
    same = ("checkpoint", "step", "feature_id")
    newest: dict[tuple, dict] = {}
    for e in sorted(entries, key=lambda e: e.get("time", "")):
        if all(e.get(k) == current[k] for k in same):
            newest[(e["sampler"], e["n"], e["steps"])] = e
    return list(newest.values())


def _checkpoint_step(path: Path) -> int:
    from diffusion.training.checkpoint import load

    match = re.fullmatch(r"step_(\d+)\.pt", path.name)
    return int(match.group(1)) if match else int(load(path)["step"])


def _run_config(run: Path) -> DictConfig:
    """The run's resolved config (``config.yaml``), else its composed Hydra config."""
    from diffusion.rundir import load_config

    resolved = run / "config.yaml"
    return OmegaConf.load(resolved) if resolved.is_file() else load_config(run)


def _steps_list(steps) -> list[int]:
    values = list(steps) if isinstance(steps, list | tuple | ListConfig) else [steps]
    if not values:
        raise ConfigError("steps must be one or more step counts, e.g. steps=50 or "
                          "steps=10,20,50; got none.")
    return values


def check_evaluate_config(cfg: DictConfig) -> tuple[DictConfig, list[int]]:
    """Every option checked before the model is loaded or the feature network trained:
    (the run's config, the step counts). The run folder must take eval.json, metrics.jsonl
    and the plot, so a read-only run fails now rather than after the scoring."""
    from hydra.utils import instantiate

    from diffusion.device import resolve_device, resolve_precision
    from diffusion.pipeline import compile_mode

    check_cli_config(cfg, "evaluate")
    run = Path(cfg.run)
    run_cfg = _run_config(run)
    steps_list = _steps_list(cfg.steps)
    check_sampling(cfg.sampler, steps_list, cfg.eta,
                   instantiate(run_cfg.scheduler).num_train_timesteps,
                   batch_size=cfg.batch_size)
    if not is_int(cfg.n) or cfg.n < 2:
        raise ConfigError(f"n must be an integer >= 2 (images per FID); got {cfg.n!r}.")
    check_metrics(cfg.metrics)
    check_bool("plot", cfg.plot)
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    if cfg.compile:
        compile_mode(cfg.compile)
    if dist.is_main():
        what = ("diffusion.evaluate records its results there: make the run folder writable "
                "or evaluate a copy of it")
        for name in ("eval.json", "metrics.jsonl", *(["figures/fid_vs_steps.png"]
                                                     if cfg.plot else [])):
            check_writable(run / name, what)
    return run_cfg, steps_list


def evaluate(cfg: DictConfig) -> list[FidResult]:
    """Evaluate ``cfg.run`` as ``cfg`` (conf/evaluate.yaml) says; returns the results."""
    from diffusion import viz
    from diffusion.pipeline import DiffusionPipeline
    from diffusion.training.checkpoint import CheckpointError, latest_checkpoint
    from diffusion.training.loggers import JsonlLogger

    run_cfg, steps_list = check_evaluate_config(cfg)
    run = Path(cfg.run)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else latest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"Run {run} has no checkpoints yet: train it longer "
                              "(trainer.ckpt_every sets how often they are written).")
    pipe = DiffusionPipeline.from_run(run, checkpoint=checkpoint, device=cfg.device,
                                      precision=cfg.precision,
                                      compile=cfg.get("compile", False))
    step = _checkpoint_step(checkpoint)
    scorer = build_scorer(cfg.metrics, run_cfg.data, device=pipe.device, progress=True,
                          root=cfg.data_root)
    results, entry = [], None
    main = dist.is_main()  # under torchrun every rank samples its share; rank 0 writes
    jsonl = JsonlLogger(run / "metrics.jsonl") if main else None
    for steps in steps_list:
        start = time.perf_counter()
        result = scorer.score_pipeline(pipe, cfg.n, sampler=cfg.sampler, steps=steps,
                                       batch_size=cfg.batch_size, eta=cfg.eta)
        seconds = time.perf_counter() - start
        results.append(result)
        if not main:
            continue
        print(f"{result}  [{seconds:.0f} s]", flush=True)
        entry = {**result.to_dict(), "checkpoint": checkpoint.name, "step": step,
                 "eta": float(cfg.eta), "batch_size": cfg.batch_size, "seed": cfg.metrics.seed,
                 "kid_subset_size": cfg.metrics.kid_subset_size if cfg.metrics.kid else None,
                 "num_classes": pipe.num_classes, "seconds": round(seconds, 1),
                 "processes": dist.world_size(), "device": str(pipe.device),
                 "command": _command(cfg, steps_list, checkpoint),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_eval(run, {entry_key(entry): entry})
        jsonl.log_metrics({"eval/fid": result.fid, "eval/fid_floor": result.floor,
                           "eval/kid": result.kid, "eval/n": result.n,
                           "eval/sampler": result.sampler, "eval/steps": result.steps,
                           "eval/eta": cfg.eta, "eval/features": result.feature_id}, step)
    if main and cfg.plot:
        path = viz.plot_fid_vs_steps(
            {run.name: plot_entries(list(read_eval(run).values()), entry)},
            run / "figures" / "fid_vs_steps.png")
        print(f"plot: {path}")
    if main:
        print(f"eval: {run / 'eval.json'}")
    dist.barrier()
    return results


def _command(cfg: DictConfig, steps: list[int], checkpoint: Path) -> str:
    """The command line that repeats this evaluation exactly: the checkpoint it scored
    (not "the newest", which moves on) and every setting the scores depend on, stated
    even where it is the default, since defaults change."""
    metrics = cfg.metrics
    args = [f"run={cfg.run}", f"checkpoint={checkpoint}", f"n={cfg.n}",
            f"sampler={cfg.sampler}", "steps=" + ",".join(map(str, steps)), f"eta={float(cfg.eta)}",
            f"batch_size={cfg.batch_size}", f"metrics.features={metrics.features}",
            f"metrics.seed={metrics.seed}", f"metrics.kid={str(metrics.kid).lower()}",
            f"metrics.kid_subset_size={metrics.kid_subset_size}"]
    for key in ("feature_epochs", "reference_n", "inception_weights"):
        if metrics.get(key) is not None:
            args.append(f"metrics.{key}={metrics[key]}")
    if cfg.data_root:
        args.append(f"data_root={cfg.data_root}")
    if cfg.precision != "auto":
        args.append(f"precision={cfg.precision}")
    return shlex.join(["python", "-m", "diffusion.evaluate", *args])


def _list_overrides(argv: list[str], keys: tuple[str, ...] = ("steps",)) -> list[str]:
    """``steps=10,20,50`` -> ``steps=[10,20,50]``: a list, not a Hydra sweep."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in keys and "," in value and not value.startswith("["):
            arg = f"{key}=[{value}]"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    dist.init_from_env()  # torchrun --nproc_per_node=N -m diffusion.evaluate ... splits sampling
    try:
        evaluate(cfg)
    except (*USER_ERRORS, FeatureNetworkError, ValueError) as exc:
        fail(exc)
    finally:
        dist.shutdown()


def main() -> None:
    try:
        check_overrides(sys.argv[1:], "evaluate")
    except ValueError as exc:
        fail(exc)
    sys.argv = [sys.argv[0], *_list_overrides(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
