"""A cascade (Ho et al. 2022): a base model's images through super-resolution stages, each a
run trained with ``conditioning=low_res`` on images ``low_res.factor`` times the side of the
stage before it.

``check_stages`` reads only the runs' configs, so a cascade whose sizes do not chain is refused
before any model loads; ``upsample`` runs the stages on images already drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusion.checks import check_number
from diffusion.errors import ConfigError
from diffusion.runs.load import read_config
from diffusion.runtime import distributed as dist
from diffusion.sampling.pipeline import chunk_seed


def stage_list(upsample) -> list[str]:
    """``upsample=`` as a list of run folders (one folder, a list, or null)."""
    if upsample in (None, "", []):
        return []
    if isinstance(upsample, str):
        return [upsample]
    return [str(stage) for stage in upsample]


def check_stages(base_cfg: dict, stages: Sequence[str], key: str = "upsample") -> list[dict]:
    """The stages' configs, checked to chain from ``base_cfg``: each a super-resolution run
    whose input is the previous stage's output (channels, side)."""
    if base_cfg.get("low_res"):
        raise ConfigError("run= is itself a super-resolution stage, which needs images to "
                          f"upsample: pass the cascade's base run as run= and this one in "
                          f"{key}=.")
    channels, size = int(base_cfg["data"]["channels"]), int(base_cfg["data"]["image_size"])
    configs = []
    for stage in stages:
        cfg = read_config(stage, key=key)
        low_res = cfg.get("low_res")
        if not low_res:
            raise ConfigError(f"{key}={stage} is not a super-resolution stage (it was not "
                              "trained with conditioning=low_res): pass runs that were.")
        data = cfg["data"]
        wanted = int(data["image_size"]) // int(low_res["factor"])
        if (int(data["channels"]), wanted) != (channels, size):
            raise ConfigError(
                f"{key}={stage} upsamples {data['channels']}-channel {wanted} px images to "
                f"{data['image_size']} px, but the stage before it gives {channels}-channel "
                f"{size} px images: chain stages whose sizes match.")
        if cfg["model"].get("num_classes") is not None:
            raise ConfigError(f"{key}={stage} is class-conditional; the cascade runs "
                              "unconditional super-resolution stages (the base may be "
                              "conditional).")
        channels, size = int(data["channels"]), int(data["image_size"])
        configs.append(cfg)
    return configs


def check_cascade_options(cfg, base_cfg) -> list[dict]:
    """A command's ``upsample=`` and ``low_res_level=`` (``diffusion.sample``,
    ``diffusion.evaluate``), checked against the base run's config ``base_cfg``; returns the
    stages' configs."""
    stages = stage_list(cfg.get("upsample"))
    configs = check_stages(base_cfg, stages)
    if cfg.get("low_res_level") is not None:
        check_number("low_res_level", cfg.low_res_level, 0, 1)
        if not stages:
            raise ConfigError("low_res_level= is the augmentation level of upsample='s "
                              "stages: pass upsample=<super-resolution run> too.")
    return configs


def upsample(images: torch.Tensor, stages: Sequence, seed: int, chunk_size: int,
             low_res_level: float | None = None, progress: bool = False) -> torch.Tensor:
    """``images`` through each stage (a ``DiffusionPipeline`` of a super-resolution run) in
    turn, each with its run's own sampler; stage k's starting noise comes from its own seeded
    stream (``chunk_seed(seed, -1 - k)``), its per-chunk noise as ``sample_across_ranks``
    draws it."""
    for k, stage in enumerate(stages):
        n = len(images)
        noise = torch.randn((n, *stage.sample_shape),
                            generator=torch.Generator().manual_seed(chunk_seed(seed, -1 - k)))
        images = stage.sample_across_ranks(
            n, noise=noise, seed=seed + k + 1, chunk_size=chunk_size, low_res=images,
            low_res_level=low_res_level, progress=progress,
            desc=f"stage {k + 2} of {len(stages) + 1}").images
    return images


class CascadePipeline:
    """A base pipeline whose draws go on through super-resolution ``stages``: what
    ``diffusion.evaluate upsample=`` scores. It answers as the base does (its shape, labels,
    scheduler), except that ``sample_across_ranks`` hands each chunk of base images through
    the stages before its ``transform`` (FID features), on the rank that drew it; chunk k's
    stages draw from ``chunk_seed(seed, -1 - k)``, so the result does not depend on the
    number of processes."""

    def __init__(self, base, stages: Sequence, seed: int = 0,
                 low_res_level: float | None = None):
        self.base, self.stages = base, list(stages)
        self.seed, self.low_res_level = seed, low_res_level

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def through_stages(self, images: torch.Tensor, chunk: int) -> torch.Tensor:
        """One chunk of base images through every stage, in one process."""
        generator = torch.Generator().manual_seed(chunk_seed(self.seed, -1 - chunk))
        for stage in self.stages:
            images = stage(len(images), generator=generator, low_res=images,
                           low_res_level=self.low_res_level, batch_size=len(images)).images
        return images

    def sample_across_ranks(self, n: int, *, chunk_size: int = 256, transform=None,
                            **options):
        chunks = -(-n // chunk_size)
        mine = iter(range(dist.rank(), chunks, dist.world_size()))  # in the order drawn

        def finish(images: torch.Tensor) -> torch.Tensor:
            out = self.through_stages(images, next(mine))
            return out if transform is None else transform(out)

        return self.base.sample_across_ranks(n, chunk_size=chunk_size, transform=finish,
                                             **options)
