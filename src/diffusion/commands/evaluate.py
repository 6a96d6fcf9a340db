"""``python -m diffusion.evaluate run=<run folder> n=10000 sampler=ddim sampler.steps=10,20,50,100``
``python -m diffusion.evaluate run=<run folder> metrics=nll n=1000`` (bits/dim: ``evaluate_nll``)

Samples ``n`` images from the run's EMA weights with the ``sampler`` config group
(``conf/sampler/<name>.yaml``) for each of its step counts, scores them with FID and
KID against the dataset's test split (``diffusion.metrics``), prints each score with its
protocol and the data floor, merges the results into ``<run>/eval.json`` (keyed by the whole
protocol, ``entry_key``, each with the command that repeats it; ``metrics.jsonl`` keeps the
training's records alone) and plots FID against network evaluations, NFE
(``<run>/figures/fid_vs_steps.png``), and against the guidance scale when it scores several
(``<run>/figures/fid_vs_guidance.png``).

``sweep=<multirun folder>`` (instead of ``run=``) evaluates every completed job of a sweep
under the one protocol, each into its own ``eval.json``; ``diffusion.report`` then leads with
the quality table.

The scorer comes from ``diffusion.config.metrics`` (shared with the trainer's periodic
FID and the bench); ``eval.json`` is read and written through ``diffusion.runs.records``.
"""

from __future__ import annotations

import copy
import itertools
import shlex
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.checks import check_writable
from diffusion.commands.evaluate_nll import evaluate_nll
from diffusion.commands.launcher import launch
from diffusion.config.control import check_control_options, control_batch, control_scales
from diffusion.config.guidance import (
    GuidanceOptions,
    build_guidance,
    guidance_args,
    guidance_record,
    load_options_classifier,
)
from diffusion.config.metrics import build_scorer, is_nll
from diffusion.config.options import check_evaluate_options
from diffusion.errors import ConfigError
from diffusion.metrics import FidResult
from diffusion.reporting import figures as viz
from diffusion.reporting.jobs import find_jobs, run_label
from diffusion.runs.load import newest_checkpoint
from diffusion.runs.records import entry_key, plot_entries, read_eval, write_eval
from diffusion.runtime import distributed as dist
from diffusion.sampling.cascade import (
    CascadePipeline,
    check_cascade_options,
    check_stages,
    stage_list,
)
from diffusion.sampling.controlled import ControlledPipeline, metric_name
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.sampling.sampler import SamplerSpec
from diffusion.training.checkpoint import saved_step


def check_evaluate_config(cfg: DictConfig) -> tuple[DictConfig, SamplerSpec, list[int],
                                                    GuidanceOptions]:
    """Every option checked before the model is loaded or the feature network trained:
    (the run's config, the sampler, its step counts, the guidance). The run folder must take
    eval.json and the plot, so a read-only run fails now rather than after the scoring."""
    run_options, guidance = check_evaluate_options(cfg)
    run = Path(cfg.run)
    check_cascade_options(cfg, run_options.run_cfg)
    check_control_options(cfg, run_options.run_cfg)
    if is_nll(cfg.metrics):
        check_writable(run / "nll.json", "diffusion.evaluate records its results there: make "
                       "the run folder writable or evaluate a copy of it")
        return run_options.run_cfg, run_options.spec, run_options.steps, guidance
    read_eval(run)  # a damaged eval.json is found now, not after the scoring
    if dist.is_main():
        what = ("diffusion.evaluate records its results there: make the run folder writable "
                "or evaluate a copy of it")
        for name in ("eval.json",
                     *(_plots(run_options.steps, guidance) if cfg.plot else [])):
            check_writable(run / name, what)
    return run_options.run_cfg, run_options.spec, run_options.steps, guidance


def evaluate(cfg: DictConfig) -> list[FidResult]:
    """Evaluate ``cfg.run`` as ``cfg`` (conf/evaluate.yaml) says; returns the results."""
    run_cfg, spec, steps_list, guided = check_evaluate_config(cfg)
    if is_nll(cfg.metrics):
        return [evaluate_nll(cfg, run_cfg)]
    run = Path(cfg.run)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(run)
    pipe = DiffusionPipeline.from_run(run, checkpoint=checkpoint, device=cfg.device,
                                      precision=cfg.precision,
                                      compile=cfg.get("compile", False))
    stages = stage_list(cfg.get("upsample"))
    data = run_cfg.data
    if stages:  # a cascade: scored on its last stage's images, against that stage's data
        data = OmegaConf.create(check_stages(run_cfg, stages)[-1]["data"])
        pipe = CascadePipeline(pipe, [DiffusionPipeline.from_run(
            stage, device=cfg.device, precision=cfg.precision) for stage in stages],
            seed=cfg.metrics.seed, low_res_level=cfg.get("low_res_level"))
    scorer = build_scorer(cfg.metrics, data, device=pipe.device, progress=True,
                          root=cfg.data_root)
    main = dist.is_main()  # under torchrun every rank samples its share; rank 0 writes
    sampler = spec.build(pipe.scheduler)
    classifier = load_options_classifier(guided)
    protocol = _protocol(cfg, spec, sampler, steps_list, checkpoint, pipe)
    control, index, _ = control_batch(cfg, pipe)
    results, entry, entries = [], None, []
    for steps, scale, classifier_scale, control_scale in itertools.product(
            steps_list, guided.scales, guided.classifier_scales,
            control_scales(cfg) if control is not None else [None]):
        start = time.perf_counter()
        scored = pipe if control is None else ControlledPipeline(
            pipe, control, index, pipe.control.scale if control_scale is None else control_scale)
        result = scorer.score_pipeline(
            scored, cfg.n, sampler=sampler, steps=steps, batch_size=cfg.batch_size,
            name=spec.name, guidance=build_guidance(guided, scale, classifier_scale, classifier))
        seconds = time.perf_counter() - start
        results.append(result)
        measured = _measured(sampler)
        if main:
            nfe = f", {measured['nfe']:g} NFE a batch" if measured else ""
            print(f"{result}  [{seconds:.0f} s{nfe}]", flush=True)
            entry = {**result.to_dict(), **protocol, "seconds": round(seconds, 1),
                     **guidance_record(guided, scale, classifier_scale), **measured,
                     **_control_record(cfg, scored),
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_eval(run, {entry_key(entry): entry})
            entries.append(entry)
    if main and cfg.plot:
        _plot(run, _plots(steps_list, guided), entry, entries)
    if main:
        print(f"eval: {run / 'eval.json'}")
    dist.barrier()
    return results


def _measured(sampler) -> dict:
    """{"nfe": mean network evaluations per batch} for a sampler that picks its own steps
    (``sampler=rk45``; on rank 0's batches under torchrun), counted since the last call."""
    counts = getattr(sampler, "evaluations", None)
    if not getattr(sampler, "adaptive", False) or not counts:
        return {}
    nfe = sum(counts) / len(counts)
    counts.clear()
    return {"nfe": round(nfe, 1)}


def _plots(steps: list[int], guided: GuidanceOptions) -> list[str]:
    """The plots an evaluation draws in its run folder: FID against network evaluations,
    and against the guidance scale when it scores several (at one step count, only that)."""
    by_scale = len(guided.scales) > 1
    return ([] if by_scale and len(steps) == 1 else ["figures/fid_vs_steps.png"]) + (
        ["figures/fid_vs_guidance.png"] if by_scale else [])


def _plot(run: Path, plots: list[str], last: dict, entries: list[dict]) -> None:
    """Draw ``plots``: against NFE, the run's entries comparable with the ``last`` one;
    against the guidance scale, this command's ``entries``; labelled by the run's overrides."""
    label = run_label(run)
    for name in plots:
        if name.endswith("fid_vs_steps.png"):
            path = viz.plot_fid_vs_steps(
                {label: plot_entries(list(read_eval(run).values()), last)}, run / name)
        else:
            path = viz.plot_fid_vs_guidance({label: entries}, run / name)
        print(f"plot: {path}")


def _protocol(cfg: DictConfig, spec: SamplerSpec, sampler, steps_list: list[int],
              checkpoint: Path, pipe: DiffusionPipeline) -> dict:
    """What every ``eval.json`` entry of this command shares: the protocol beside the score
    (``entry_key`` reads it) and the command that repeats it."""
    options, metrics = spec.changed_options(), cfg.metrics
    return {"checkpoint": checkpoint.name, "step": saved_step(checkpoint),
            "eta": float(spec.eta), "timestep_spacing": sampler.config.get("timestep_spacing"),
            **({"sampler_options": options} if options else {}),
            "batch_size": cfg.batch_size, "seed": metrics.seed,
            "kid_subset_size": metrics.kid_subset_size if metrics.kid else None,
            "num_classes": pipe.num_classes, "processes": dist.world_size(),
            "device": str(pipe.device), "command": _command(cfg, spec, steps_list, checkpoint),
            **_cascade_record(cfg)}


def _cascade_record(cfg: DictConfig) -> dict:
    """A cascade's part of the protocol: its stages (absolute folders) and sampling level."""
    stages = stage_list(cfg.get("upsample"))
    if not stages:
        return {}
    return {"upsample": [str(Path(stage).resolve()) for stage in stages],
            "low_res_level": cfg.get("low_res_level")}


def _control_record(cfg: DictConfig, scored) -> dict:
    """A ControlNet's part of an entry: the controls, the scale and the adherence to them."""
    if not isinstance(scored, ControlledPipeline):
        return {}
    return {"control_image": str(cfg.control_image), "control_scale": scored.scale,
            f"control_{metric_name(scored.base.control)}": round(scored.mean_adherence(), 5)}


def _precheck(cfg: DictConfig) -> list[Path]:
    """One job of a sweep, checked before any runs; evaluations merge into the run's
    eval.json, so jobs never write one file over another."""
    for job_cfg in _job_configs(cfg):
        check_evaluate_config(job_cfg)
    return []


def _job_configs(cfg: DictConfig) -> list[DictConfig]:
    """``cfg`` itself, or with ``sweep=<multirun folder>`` one copy per completed job of that
    sweep (``run=`` set to the job); the jobs that did not complete are named and left out."""
    if not cfg.get("sweep"):
        return [cfg]
    if not OmegaConf.is_missing(cfg, "run"):
        raise ConfigError(f"run={cfg.run} and sweep={cfg.sweep}: pass one of them (sweep= "
                          "evaluates every job of a multirun folder).")
    jobs = find_jobs([Path(str(cfg.sweep))])
    done = [job for job in jobs if job.status == "completed"]
    for job in jobs:
        if job.status != "completed":
            print(f"skipping {job.path}: {job.status}", flush=True)
    if not done:
        raise ConfigError(f"No job under sweep={cfg.sweep} completed, so there is nothing to "
                          "evaluate: let the sweep finish (or resume its jobs) first.")
    configs = []
    for job in done:
        job_cfg = copy.deepcopy(cfg)
        with open_dict(job_cfg):
            job_cfg.run, job_cfg.sweep = str(job.path), None
        configs.append(job_cfg)
    return configs


def evaluate_jobs(cfg: DictConfig) -> dict[str, list[FidResult]]:
    """``evaluate`` each job ``cfg`` names (``run=``, or every completed job of ``sweep=``),
    all checked before the first is scored; returns the results by run folder."""
    configs = _job_configs(cfg)
    for job_cfg in configs:
        check_evaluate_config(job_cfg)
    results = {job_cfg.run: evaluate(job_cfg) for job_cfg in configs}
    if cfg.get("sweep") and dist.is_main():
        print(f"report: python -m diffusion.report sweep={cfg.sweep}")
    return results


def _command(cfg: DictConfig, spec: SamplerSpec, steps: list[int], checkpoint: Path) -> str:
    """The command line that repeats this evaluation exactly: the checkpoint it scored
    (not "the newest", which moves on) and every setting the scores depend on, stated
    even where it is the default, since defaults change."""
    metrics = cfg.metrics
    args = [f"run={cfg.run}", f"checkpoint={checkpoint}", f"n={cfg.n}",
            f"sampler={spec.name}", "sampler.steps=" + ",".join(map(str, steps)),
            *(f"sampler.{k}={_value(v)}" for k, v in spec.options.items()),
            f"sampler.timestep_spacing={spec.timestep_spacing or 'null'}",
            f"batch_size={cfg.batch_size}", f"metrics.features={metrics.features}",
            f"metrics.seed={metrics.seed}", f"metrics.kid={str(metrics.kid).lower()}",
            f"metrics.kid_subset_size={metrics.kid_subset_size}"]
    for key in ("feature_epochs", "reference_n", "inception_weights"):
        if metrics.get(key) is not None:
            args.append(f"metrics.{key}={metrics[key]}")
    args += guidance_args(cfg)
    stages = stage_list(cfg.get("upsample"))
    if stages:
        args.append(f"upsample=[{','.join(stages)}]")
        if cfg.get("low_res_level") is not None:
            args.append(f"low_res_level={cfg.low_res_level}")
    if cfg.get("control_image") is not None:
        args.append(f"control_image={cfg.control_image}")
        scales = [s for s in control_scales(cfg) if s is not None]
        if scales:
            args.append("control_scale=" + ",".join(f"{s:g}" for s in scales))
    if cfg.data_root:
        args.append(f"data_root={cfg.data_root}")
    if cfg.precision != "auto":
        args.append(f"precision={cfg.precision}")
    return shlex.join(["python", "-m", "diffusion.evaluate", *args])


def _value(value) -> str:
    """A value as an override spells it: true/false, null, numbers and words as they are."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _list_overrides(argv: list[str], keys: tuple[str, ...] = (
        "sampler.steps", "guidance_scale", "classifier_scale", "control_scale")) -> list[str]:
    """``sampler.steps=10,20,50`` -> ``sampler.steps=[10,20,50]``: a list, not a Hydra
    sweep (so too the guidance scales)."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in keys and "," in value and not value.startswith("["):
            arg = f"{key}=[{value}]"
        out.append(arg)
    return out


def main() -> None:
    """``python -m diffusion.evaluate ...``; see the module docstring."""
    launch("evaluate", evaluate_jobs, rewrite=_list_overrides, precheck=_precheck)


if __name__ == "__main__":
    main()
