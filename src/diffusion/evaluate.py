"""``python -m diffusion.evaluate run=<run folder> n=10000 sampler=ddim steps=10,20,50,100``

Samples ``n`` images from the run's EMA weights for each step count, scores them with FID and
KID against the dataset's test split (``diffusion.metrics``), prints each score with its
protocol and the data floor, merges the results into ``<run>/eval.json`` (keyed by
``<sampler>-<steps>-n<n>``), appends them to ``<run>/metrics.jsonl`` and plots FID against
sampling steps (``<run>/figures/fid_vs_steps.png``).

``build_evaluator(cfg)`` gives the trainer the same measurement as a periodic small FID.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusion import distributed as dist
from diffusion.cli import CONF_DIR, USER_ERRORS, fail
from diffusion.metrics import DataRef, FeatureNetworkError, FidEvaluator, FidResult, FidScorer
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
    from diffusion.device import resolve_device

    metrics = cfg.get("metrics")
    if metrics is None:
        raise ConfigError("trainer.eval_every needs a metrics config: add metrics=fid (this run "
                          "was made before metrics existed) or set trainer.eval_every=0.")
    scorer = build_scorer(metrics, cfg.data,
                          device=resolve_device(device or cfg.trainer.device))
    return FidEvaluator(scorer, n=metrics.n, sampler=metrics.sampler, steps=metrics.steps,
                        batch_size=metrics.batch_size)


# ---------------------------------------------------------------------------------------------
# Evaluating a run folder
# ---------------------------------------------------------------------------------------------


def entry_key(sampler: str, steps: int, n: int) -> str:
    return f"{sampler}-{steps}-n{n}"


def read_eval(run: str | Path) -> dict[str, dict]:
    """The entries of ``<run>/eval.json`` ({} when the run was never evaluated)."""
    path = Path(run) / "eval.json"
    return json.loads(path.read_text()).get("entries", {}) if path.is_file() else {}


def write_eval(run: str | Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``<run>/eval.json`` (same key: the newer result wins)."""
    path = Path(run) / "eval.json"
    merged = {**read_eval(run), **entries}
    tmp = path.with_name(".eval.json.tmp")
    tmp.write_text(json.dumps({"entries": dict(sorted(merged.items()))}, indent=2) + "\n")
    tmp.replace(path)
    return path


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
    if not values or any(not isinstance(s, int) or s < 1 for s in values):
        raise ConfigError(f"steps must be positive integers, e.g. steps=50 or steps=10,20,50; "
                          f"got {steps!r}.")
    return values


def evaluate(cfg: DictConfig) -> list[FidResult]:
    """Evaluate ``cfg.run`` as ``cfg`` (conf/evaluate.yaml) says; returns the results."""
    from diffusion import viz
    from diffusion.pipeline import DiffusionPipeline
    from diffusion.training.checkpoint import CheckpointError, latest_checkpoint
    from diffusion.training.loggers import JsonlLogger

    run = Path(cfg.run)
    run_cfg = _run_config(run)
    steps_list = _steps_list(cfg.steps)
    if not isinstance(cfg.n, int) or cfg.n < 2:
        raise ConfigError(f"n must be an integer >= 2 (images per FID); got {cfg.n!r}.")
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
    results, entries = [], {}
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
                 "eta": cfg.eta, "batch_size": cfg.batch_size, "seconds": round(seconds, 1),
                 "processes": dist.world_size(), "device": str(pipe.device),
                 "command": _command(cfg, steps_list),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entries[entry_key(cfg.sampler, steps, cfg.n)] = entry
        write_eval(run, {entry_key(cfg.sampler, steps, cfg.n): entry})
        jsonl.log_metrics({"eval/fid": result.fid, "eval/fid_floor": result.floor,
                           "eval/kid": result.kid, "eval/n": result.n,
                           "eval/sampler": result.sampler, "eval/steps": result.steps,
                           "eval/features": result.feature_id}, step)
    if main and cfg.plot:
        path = viz.plot_fid_vs_steps({run.name: list(read_eval(run).values())},
                                     run / "figures" / "fid_vs_steps.png")
        print(f"plot: {path}")
    if main:
        print(f"eval: {run / 'eval.json'}")
    dist.barrier()
    return results


def _command(cfg: DictConfig, steps: list[int]) -> str:
    """The command line that repeats this evaluation."""
    args = [f"run={cfg.run}", f"n={cfg.n}", f"sampler={cfg.sampler}",
            "steps=" + ",".join(map(str, steps))]
    if cfg.sampler == "ddpm" or cfg.eta:  # stochastic steps draw noise batch by batch
        args.append(f"batch_size={cfg.batch_size}")
    if cfg.metrics.features != "domain":
        args.append(f"metrics.features={cfg.metrics.features}")
    return " ".join(["python -m diffusion.evaluate", *args])


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
    sys.argv = [sys.argv[0], *_list_overrides(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
