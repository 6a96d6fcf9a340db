"""``python -m diffusion.evaluate run=<run> metrics=nll n=1000``: bits/dim of the first ``n``
test images under a trained run (``diffusion.metrics.nll``), printed and merged into
``<run>/nll.json`` keyed by the protocol, with the command that repeats it."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from omegaconf import DictConfig

from diffusion.config.metrics import NLL_KEYS
from diffusion.data import build_dataset, dataset_info, dataset_options
from diffusion.errors import ConfigError
from diffusion.metrics.nll import NllResult, score_nll
from diffusion.runs.load import newest_checkpoint
from diffusion.runs.records import read_json
from diffusion.runtime import distributed as dist
from diffusion.runtime.files import write_atomic
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.training.checkpoint import saved_step


def evaluate_nll(cfg: DictConfig, run_cfg: DictConfig) -> NllResult:
    """Score ``cfg.run`` as ``cfg`` (metrics=nll) says; returns the result."""
    if dist.world_size() > 1:
        raise ConfigError("metrics=nll runs in one process: start it with python, not "
                          "torchrun.")
    run = Path(cfg.run)
    if run_cfg.get("latent_space"):
        raise ConfigError(f"run={run} models an autoencoder's latents, whose likelihood is no "
                          "likelihood of the images: metrics=nll scores pixel-space runs.")
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(run)
    pipe = DiffusionPipeline.from_run(run, checkpoint=checkpoint, device=cfg.device,
                                      precision="fp32")
    data = run_cfg.data
    split = dataset_info(data.name).eval_split
    dataset = build_dataset(data.name, root=cfg.data_root or data.get("root"), split=split,
                            image_size=data.get("image_size"),
                            center_crop=bool(data.get("center_crop")), download=False,
                            **dataset_options(data))
    images, labels = dataset.preprocessed()
    n = min(int(cfg.n), len(images))
    metrics = cfg.metrics
    start = time.perf_counter()
    result = score_nll(pipe.model, pipe.scheduler, images[:n],
                       labels=labels[:n] if pipe.num_classes is not None else None,
                       batch_size=metrics.batch_size, trace=metrics.trace, rtol=metrics.rtol,
                       atol=metrics.atol, vlb=metrics.vlb, seed=metrics.seed,
                       device=pipe.device,
                       progress=lambda done, total: print(f"  {done}/{total} images",
                                                          flush=True))
    seconds = time.perf_counter() - start
    print(f"{result}  [{seconds:.0f} s]", flush=True)
    entry = {**result.to_dict(), "split": split, "checkpoint": checkpoint.name,
             "step": saved_step(checkpoint), "rtol": metrics.rtol, "atol": metrics.atol,
             "seed": metrics.seed, "batch_size": metrics.batch_size,
             "conditional": pipe.num_classes is not None, "device": str(pipe.device),
             "seconds": round(seconds, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "command": _command(cfg, checkpoint)}
    key = " ".join(f"{k}={entry[k]}" for k in ("trace", "n", "split", "checkpoint", "step",
                                                "rtol", "atol", "seed", "batch_size"))
    path = run / "nll.json"
    entries = read_json(path).get("entries", {}) if path.is_file() else {}
    write_atomic(path, json.dumps({"entries": dict(sorted({**entries, key: entry}.items()))},
                                  indent=2) + "\n",
                 "free space on the run folder's disk, then run again")
    print(f"nll: {path}")
    return result


def _command(cfg: DictConfig, checkpoint: Path) -> str:
    """The command that repeats this evaluation: every setting the figure depends on."""
    metrics = cfg.metrics
    def spelled(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    args = [f"run={cfg.run}", f"checkpoint={checkpoint}", "metrics=nll", f"n={cfg.n}",
            *(f"metrics.{k}={spelled(metrics[k])}" for k in NLL_KEYS[1:])]
    if cfg.data_root:
        args.append(f"data_root={cfg.data_root}")
    return shlex.join(["python", "-m", "diffusion.evaluate", *args])
