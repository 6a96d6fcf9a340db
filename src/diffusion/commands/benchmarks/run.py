"""Build each side, warm it up, time every operation with the sides taking turns, and report.

Memory is measured while a side is built and warmed up (training: model, optimizer state, EMA
and activations; sampling: what a sampling call adds on top). Times are medians over
``bench.repeats`` repeats after ``bench.warmup`` untimed calls.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from diffusion.checks import check_choice, check_int, check_writable
from diffusion.commands.benchmarks.guidance import check_guidance_bench, time_guidance
from diffusion.commands.benchmarks.guidance import describe as describe_guidance
from diffusion.commands.benchmarks.measure import (
    MemoryMeter,
    count_flops,
    format_table,
    matmul_peak_flops,
    synchronize,
    time_interleaved,
    top_ops,
    warm_up,
)
from diffusion.commands.benchmarks.ours import OurSide, Side, bench_dataset, bench_samplers
from diffusion.config.build import validate
from diffusion.config.metrics import build_scorer
from diffusion.errors import ConfigError, FeatureNetworkError
from diffusion.runs.records import cpu_model, portable_arg, portable_value
from diffusion.runtime.device import resolve_device, resolve_precision
from diffusion.runtime.files import write_atomic

OPERATIONS = {"train": "train_step", "data": "next_batch", "ema": "ema_update"}
"""The operations besides sampling, which is timed once per sampler (``sample:<name>``)."""

ROWS = [  # (label, key, format); higher is better except where the label says otherwise
    ("parameters (M)", "params_m", "{:.3f}"),
    ("train images/s", "train_images_per_s", "{:.2f}"),
    ("data images/s", "data_images_per_s", "{:.0f}"),
    ("EMA update ms (lower is better)", "ema_update_ms", "{:.2f}"),
    ("train peak MiB (lower is better)", "train_peak_mib", "{:.0f}"),
    ("sample peak MiB (lower is better)", "sample_peak_mib", "{:.0f}"),
    ("train GFLOP/image", "train_gflop_per_image", "{:.3f}"),
    ("train TFLOP/s", "train_tflop_per_s", "{:.3f}"),
    ("MFU % (of measured bf16 matmul peak)", "mfu_percent", "{:.1f}"),
]


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} CPU core(s)"


def sample_rows(samplers: list[str]) -> list[tuple[str, str, str]]:
    """The table rows of sampling speed, one per sampler of ``bench.sampler``."""
    return [(f"sample images*steps/s ({name})", f"sample_{name}_images_steps_per_s", "{:.2f}")
            for name in samplers]


def _build_and_warm(name, factory, device, warmup: int, warm: dict,
                    samplers: list[str]) -> tuple[Side, dict]:
    """Build a side and warm each operation up, measuring the memory of training and
    sampling (with the first sampler) on the way."""
    with MemoryMeter(device) as train_memory:
        side = factory()
        warm["train"][name] = warm_up(side.train_step, device, warmup)
    with MemoryMeter(device) as sample_memory:
        warm[f"sample:{samplers[0]}"][name] = warm_up(
            functools.partial(side.sample, samplers[0]), device, warmup)
    for sampler in samplers[1:]:
        warm[f"sample:{sampler}"][name] = warm_up(functools.partial(side.sample, sampler),
                                                  device, warmup)
    warm["data"][name] = warm_up(side.next_batch, device, warmup + 1)  # +1: worker start-up
    warm["ema"][name] = warm_up(side.ema_update, device, warmup + 1)
    return side, {"train_peak_mib": train_memory.peak_mib,
                  "sample_peak_mib": sample_memory.peak_mib, "memory_kind": train_memory.kind}


def _results(side: Side, timings: dict, memory: dict, cfg: DictConfig, flops: dict | None,
             peak: float | None, samplers: list[str]) -> dict:
    """Rates from the median timings; ``sample_images_steps_per_s`` is the first sampler's
    (as records before several samplers have it), ``sample_<name>_...`` each sampler's."""
    batch, bench = cfg.data.batch_size, cfg.bench
    train_s = timings["train"].median
    sampling = {f"sample_{name}_images_steps_per_s": bench.sample_n * bench.sample_steps
                / timings[f"sample:{name}"].median for name in samplers}
    out = {
        "params": side.num_params, "params_m": side.num_params / 1e6,
        "train_images_per_s": batch / train_s,
        "sample_images_steps_per_s": sampling[f"sample_{samplers[0]}_images_steps_per_s"],
        **sampling,
        "data_images_per_s": batch / timings["data"].median,
        "ema_update_ms": 1000 * timings["ema"].median,
        **memory,
        "info": side.info,
        "timings": {op: t.to_dict() for op, t in timings.items()},
    }
    if flops is not None:
        out["train_gflop_per_image"] = flops["train"] / batch / 1e9
        out["sample_gflop_per_image_step"] = flops["sample"] / bench.sample_n / 1e9
        out["train_tflop_per_s"] = flops["train"] / train_s / 1e12
        if peak:
            out["mfu_percent"] = 100 * flops["train"] / train_s / peak
    return out


def run_benchmark(cfg: DictConfig, command: str = "") -> dict:
    """Measure the configured model (and, with ``vs=diffusers``, diffusers' counterpart);
    returns everything that goes into the JSON record."""
    validate(cfg)
    bench = cfg.bench
    check_choice("vs", cfg.vs, [None, "diffusers"])
    check_choice("bench.flops", bench.flops, ["auto", True, False])
    bench_samplers(bench)
    for key in ("repeats", "sample_n", "sample_steps"):
        check_int(f"bench.{key}", bench[key])
    fid_n = check_int("bench.fid_n", bench.get("fid_n", 0), minimum=0, note=" (0: off)")
    if fid_n == 1:
        raise ConfigError("bench.fid_n must be 0 (off) or at least 2 (an FID needs two "
                          "images); got 1.")
    check_int("bench.fid_batch", bench.get("fid_batch", 1000))
    if bench.num_threads is not None:
        check_int("bench.num_threads", bench.num_threads, note=" (or null: torch's default)")
    if bench.get("guidance_scale") is not None:
        check_guidance_bench(cfg)
    try:
        device = resolve_device(cfg.trainer.device)
        precision = resolve_precision(cfg.trainer.precision, device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_writable(output_path(cfg, device.type, precision), "set bench.out to a writable file")
    threads = torch.get_num_threads()
    if bench.num_threads is not None:
        torch.set_num_threads(bench.num_threads)
    try:
        return _measure(cfg, device, precision, command)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: DictConfig, device: torch.device, precision: str, command: str) -> dict:
    """Measure every side in a scratch directory, then make the record (so its duration
    includes removing that directory)."""
    load_before = _load_average()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="diffusion-bench-") as tmp:
        measured = _measure_sides(cfg, device, precision, Path(tmp))
    return _record(cfg, device, precision, command, started, load_before, measured)


@dataclass(frozen=True)
class _Measured:
    """What ``_record`` needs from the measurements, once the scratch directory is gone."""

    data_source: str
    samplers: list[str]
    peak: float | None
    results: dict
    extras: dict


def _measure_sides(cfg: DictConfig, device: torch.device, precision: str,
                   workdir: Path) -> _Measured:
    """Build and warm up each side in turn, then time every operation with the sides taking
    turns (so a drift of the machine hits them alike), and count FLOPs where asked."""
    bench = cfg.bench
    count_ops = bench.flops is True or (bench.flops == "auto" and device.type == "cuda")
    train_set, data_source = bench_dataset(cfg, workdir)
    sides: dict[str, Side] = {}
    factories = _factories(cfg, train_set, device, precision, workdir, sides)
    memory: dict[str, dict] = {}
    samplers = [spec.name for spec in bench_samplers(bench)]
    calls = {op: lambda s, method=method: getattr(s, method)
             for op, method in OPERATIONS.items()}
    calls.update({f"sample:{name}": lambda s, name=name: functools.partial(s.sample, name)
                  for name in samplers})
    warm: dict[str, dict] = {op: {} for op in calls}
    for name, factory in factories.items():
        sides[name], memory[name] = _build_and_warm(name, factory, device, bench.warmup,
                                                    warm, samplers)
    timings = {op: time_interleaved({n: call(s) for n, s in sides.items()},
                                    device, bench.repeats, bench.min_time_s, warm[op])
               for op, call in calls.items()}
    flops = ({n: {"train": count_flops(s.forward_backward), "sample": count_flops(s.forward)}
              for n, s in sides.items()} if count_ops else {})
    peak = matmul_peak_flops(device) if count_ops and device.type == "cuda" else None
    extras = _extras(cfg, sides, device, samplers)
    for side in sides.values():
        side.close()
    results = {name: _results(side, {op: timings[op][name] for op in calls},
                              memory[name], cfg, flops.get(name), peak, samplers)
               for name, side in sides.items()}
    return _Measured(data_source, samplers, peak, results, extras)


def _factories(cfg: DictConfig, train_set: Dataset, device: torch.device, precision: str,
               workdir: Path, sides: dict[str, Side]) -> dict[str, Callable[[], Side]]:
    """How to build each side, ours first: diffusers' counterpart is sized to match ours, so
    its factory reads ours from ``sides`` once that is built."""
    factories = {"ours": lambda: OurSide(cfg, train_set, device, workdir)}
    if cfg.vs == "diffusers":
        from diffusion.commands.benchmarks.diffusers_side import DiffusersSide

        factories["diffusers"] = lambda: DiffusersSide(
            cfg, sides["ours"].num_params, train_set, device, precision)
    return factories


def _extras(cfg: DictConfig, sides: dict[str, Side], device: torch.device,
            samplers: list[str]) -> dict:
    """The optional parts of the record, measured while the sides are still open: operator
    profiles (``bench.profile``), a whole FID (``bench.fid_n``) and guided sampling
    (``bench.guidance_scale``)."""
    bench = cfg.bench
    extras: dict = {}
    if bench.profile:
        extras["profiles"] = {
            n: {"train": top_ops(s.train_step, device),
                **{f"sample {name}": top_ops(functools.partial(s.sample, name), device)
                   for name in samplers}}
            for n, s in sides.items()}
    if bench.get("fid_n"):
        extras["fid_eval"] = _time_fid(cfg, sides["ours"], device)
    if bench.get("guidance_scale") is not None:
        extras["guidance"] = time_guidance(cfg, sides["ours"].pipeline, device)
    return extras


def _record(cfg: DictConfig, device: torch.device, precision: str, command: str,
            started: float, load_before: tuple[float, float, float] | None,
            measured: _Measured) -> dict:
    """The JSON record: when, where and how the benchmark ran, the results, the ratios of
    ours to diffusers' where both have a positive value, and the optional parts."""
    results, samplers, peak = measured.results, measured.samplers, measured.peak
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "command": " ".join(portable_arg(word) for word in command.split(" ")),
        "device": device.type,
        "machine": _machine(device),
        "precision": precision,
        "num_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "duration_s": time.time() - started,
        "versions": _versions(),
        "data_source": measured.data_source,
        "batch_size": cfg.data.batch_size,
        "samplers": samplers,
        "sample_n": cfg.bench.sample_n,
        "sample_steps": cfg.bench.sample_steps,
        "matmul_peak_tflop_per_s": peak / 1e12 if peak else None,
        "results": results,
        "config": _portable(OmegaConf.to_container(cfg, resolve=True)),
    }
    if "diffusers" in results:
        record["ratios_ours_over_diffusers"] = {
            key: results["ours"][key] / results["diffusers"][key]
            for _, key, _ in [*ROWS, *sample_rows(samplers), ("", "sample_images_steps_per_s", "")]
            if _ratio_defined(results, key)}
    record.update(measured.extras)
    return record


def _load_average() -> tuple[float, float, float] | None:
    """The system load averages, so a record shows whether other work competed with it;
    None where the platform has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def _portable(node, key: str = ""):
    """The resolved config with each path in it made portable (``diffusion.runs.records``)."""
    if isinstance(node, dict):
        return {k: _portable(v, f"{key}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v, key) for v in node]
    return portable_value(key, node)


def _time_fid(cfg: DictConfig, side: OurSide, device: torch.device) -> dict:
    """Seconds for one whole FID of ``bench.fid_n`` images (the first sampler of
    ``bench.sampler``) from the pipeline the trainer samples with (its EMA weights as they
    are: the time does not depend on them).

    Timed: sampling, feature extraction, FID and KID, as ``diffusion.evaluate`` does them.
    Not timed: building the feature network and the cached reference and floor features
    (first use on a machine), and a warm-up FID of one batch (compilation, allocator).
    """
    bench = cfg.bench
    n, batch = int(bench.fid_n), int(bench.fid_batch)
    start = time.perf_counter()
    try:
        scorer = build_scorer(cfg.metrics, cfg.data, device=device)
    except FeatureNetworkError as exc:
        raise ConfigError(str(exc)) from None
    scorer.floor(n)  # cached by the scorer, as a repeated evaluation would find it
    setup_s = time.perf_counter() - start
    spec = bench_samplers(bench)[0]
    kwargs = dict(sampler=spec.build(side.pipeline.scheduler), steps=bench.fid_steps,
                  batch_size=batch, name=spec.name)
    scorer.score_pipeline(side.pipeline, min(n, batch), **kwargs)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    result = scorer.score_pipeline(side.pipeline, n, **kwargs)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"n": n, "sampler": spec.name, "steps": bench.fid_steps, "batch_size": batch,
            "seconds": seconds, "images_per_s": n / seconds,
            "image_steps_per_s": n * bench.fid_steps / seconds, "setup_s": setup_s,
            "feature_id": result.feature_id, "reference": result.reference,
            "reference_n": result.reference_n, "kid": result.kid is not None}


def _ratio_defined(results: dict, key: str) -> bool:
    values = [results[n].get(key) for n in ("ours", "diffusers")]
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def _versions() -> dict:
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def output_path(cfg: DictConfig, device: str, precision: str) -> Path:
    """``bench.out``, else ``experiments/bench/<name>-<device>-<precision>-b<batch>[...].json``
    where ``[...]`` names every setting that changes what is measured (sampling size and
    steps, samplers, compile, ...), so two different measurements never share a file."""
    if cfg.bench.out:
        return Path(cfg.bench.out)
    bench = cfg.bench
    names = list(bench.sampler) if OmegaConf.is_list(bench.sampler) else [bench.sampler]
    parts = [cfg.name, device, precision, f"b{cfg.data.batch_size}",
             f"n{bench.sample_n}x{bench.sample_steps}", "+".join(map(str, names))]
    parts += [f"fid{bench.fid_n}x{bench.fid_steps}"] if bench.get("fid_n") else []
    parts += [f"cfg{bench.guidance_scale:g}"] if bench.get("guidance_scale") is not None else []
    parts += [flag for flag in ("compile", "channels_last") if cfg.trainer[flag]]
    if cfg.data.on_device:
        parts.append("on_device")
    if cfg.vs:
        parts.append(f"vs_{cfg.vs}")
    return Path(cfg.paths.root_dir) / "experiments" / "bench" / f"{'-'.join(map(str, parts))}.json"


def write_record(record: dict, path: Path) -> Path:
    return write_atomic(path, json.dumps(record, indent=2) + "\n",
                        "free space there, or set bench.out to a file elsewhere")


def report(record: dict) -> str:
    """The table printed at the end of a run (and the settings that produced it)."""
    results = record["results"]
    names = list(results)
    header = ["", *names] + (["ours/diffusers"] if "diffusers" in names else [])
    rows = []
    rows_spec = [*ROWS[:2], *sample_rows(record.get("samplers", [])), *ROWS[2:]]
    for label, key, fmt in rows_spec:
        if not any(key in results[n] for n in names):
            continue
        row = [label] + [fmt.format(results[n][key]) if key in results[n] else "-"
                         for n in names]
        if "diffusers" in names:
            ratio = record["ratios_ours_over_diffusers"].get(key)
            row.append(f"{ratio:.2f}x" if ratio is not None else "-")
        rows.append(row)
    ours = results["ours"]["info"]
    load = record["load_average_before"]
    lines = [
        f"{record['date']}  {record['machine']}  ({record['device']}, {record['precision']}, "
        f"{record['num_threads']} thread(s), load average {load[0]:.2f})" if load else
        f"{record['date']}  {record['machine']}  ({record['device']}, {record['precision']})",
        f"batch {record['batch_size']}, compile={ours['compile']}, "
        f"channels_last={ours['channels_last']}, optimizer {ours['optimizer']} "
        f"({ours['optimizer_impl']}), EMA every {ours['ema_every']}; data: "
        f"{record['data_source']}; memory: {results['ours']['memory_kind']}",
    ]
    if "diffusers" in names:
        n_ours, n_theirs = results["ours"]["params"], results["diffusers"]["params"]
        lines.append(f"parameters: ours {n_ours:,}, diffusers UNet2DModel {n_theirs:,} "
                     f"({100 * (n_theirs / n_ours - 1):+.2f}%)")
    text = [*lines, "", format_table(header, rows)]
    fid = record.get("fid_eval")
    if fid:
        text += ["", f"FID of {fid['n']:,} images ({fid['sampler']}-{fid['steps']}, batch "
                     f"{fid['batch_size']}, {fid['feature_id']}, KID too: {fid['kid']}): "
                     f"{fid['seconds']:.1f} s, {fid['images_per_s']:.1f} images/s "
                     f"(ours; one-off setup {fid['setup_s']:.1f} s not included)"]
    if record.get("guidance"):
        text += ["", describe_guidance(record["guidance"])]
    return "\n".join(text)
