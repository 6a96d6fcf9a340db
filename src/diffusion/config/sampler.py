"""The ``sampler`` config group read into a ``SamplerSpec``: a group option by name, and the
sampler of a training config (also of run folders from before the group)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from diffusion.config.paths import CONF_DIR
from diffusion.sampling.checks import check_sampler
from diffusion.sampling.sampler import SamplerSpec


def training_sampler(cfg: Mapping[str, Any]) -> SamplerSpec:
    """The sampler of a training config's grids and periodic FID (``SamplerSpec.of_run``:
    also of run folders from before the group)."""
    return SamplerSpec.of_run(cfg)


def named_sampler(name: str, key: str = "sampler") -> SamplerSpec:
    """The spec ``conf/sampler/<name>.yaml`` states (what ``sampler=<name>`` gives)."""
    check_sampler(name, key)
    return SamplerSpec.from_config(OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml"), key)
