"""What classifier-free guidance costs: guided sampling of B images (one forward of 2B per
step) against unguided sampling of 2B images, timed in turns on the trainer's pipeline.

The guided draw does the network work of the unguided one plus the concatenation and the
combination of the two halves; ``guided_over_unguided`` is the ratio of their times per
image-step of the 2B-image forward (1 would be free guidance).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from diffusion.commands.benchmarks.measure import time_interleaved, warm_up
from diffusion.commands.benchmarks.ours import bench_samplers
from diffusion.errors import ConfigError
from diffusion.sampling.guidance import Guidance
from diffusion.sampling.pipeline import DiffusionPipeline


def check_guidance_bench(cfg: DictConfig) -> None:
    """``bench.guidance_scale`` can be timed: a conditional model, an even ``sample_n``."""
    bench = cfg.bench
    if cfg.model.get("num_classes") is None:
        raise ConfigError("bench.guidance_scale needs a class-conditional model: add "
                          f"model.num_classes={cfg.data.num_classes}.")
    if bench.sample_n < 2 or bench.sample_n % 2:
        raise ConfigError(f"bench.guidance_scale compares B guided images with 2B unguided "
                          f"ones: bench.sample_n must be even; got {bench.sample_n}.")
    try:
        Guidance(scale=bench.guidance_scale)
    except ValueError as exc:
        raise ConfigError(f"bench.{exc}") from None


def time_guidance(cfg: DictConfig, pipeline: DiffusionPipeline, device: torch.device) -> dict:
    """Guided (``bench.guidance_scale``, B = ``bench.sample_n`` / 2 images) against unguided
    (``bench.sample_n`` = 2B images) sampling, ``bench.sample_steps`` steps each of the first
    sampler of ``bench.sampler``."""
    bench = cfg.bench
    scale = bench.guidance_scale
    half = bench.sample_n // 2
    guidance = Guidance(scale=float(scale))
    labels = torch.arange(half) % pipeline.num_classes
    spec = bench_samplers(bench)[0]  # the first of bench.sampler
    sampler = spec.build(pipeline.scheduler)

    def draw(n, **kwargs):
        return lambda: pipeline(n, steps=bench.sample_steps, sampler=sampler,
                                generator=torch.Generator().manual_seed(cfg.seed), **kwargs)

    fns = {"unguided": draw(bench.sample_n, y=labels.repeat(2)),
           "guided": draw(half, y=labels, guidance=guidance)}
    warm = {name: warm_up(fn, device, bench.warmup) for name, fn in fns.items()}
    timings = time_interleaved(fns, device, bench.repeats, bench.min_time_s, warm)
    forward_image_steps = bench.sample_n * bench.sample_steps
    return {"guidance_scale": float(scale), "guided_images": half,
            "forward_batch": bench.sample_n, "steps": bench.sample_steps,
            "sampler": spec.name,
            "unguided_s": timings["unguided"].median, "guided_s": timings["guided"].median,
            "unguided_forward_image_steps_per_s": forward_image_steps
            / timings["unguided"].median,
            "guided_forward_image_steps_per_s": forward_image_steps / timings["guided"].median,
            "guided_over_unguided": timings["guided"].median / timings["unguided"].median,
            "timings": {name: t.to_dict() for name, t in timings.items()}}


def describe(result: dict) -> str:
    """One line for the bench's report."""
    return (f"classifier-free guidance (w={result['guidance_scale']:g}, "
            f"{result['sampler']}-{result['steps']}): {result['guided_images']} guided images "
            f"{result['guided_s']:.3f} s, {result['forward_batch']} unguided "
            f"{result['unguided_s']:.3f} s: {result['guided_over_unguided']:.3f}x per "
            f"image-step of the {result['forward_batch']}-image forward")
