"""The ``sampler`` config group read into a ``SamplerSpec``: a group option by name, and the
sampler of a training config (also of run folders from before the group)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from diffusion.config.legacy import OLD_TRAINER_SAMPLER_KEYS
from diffusion.config.paths import CONF_DIR
from diffusion.sampling.checks import check_sampler
from diffusion.sampling.sampler import SamplerSpec


def training_sampler(cfg: Mapping[str, Any]) -> SamplerSpec:
    """The sampler of a training config's grids and periodic FID: its ``sampler`` group, one
    step count. A run folder from before the group states it as ``trainer.sampler``,
    ``trainer.sample_steps`` and ``trainer.sample_spacing``, which are read instead."""
    node = cfg.get("sampler")
    if node is None:
        trainer = cfg.get("trainer") or {}
        node = {"name": "ddim", "steps": 50, "timestep_spacing": "trailing",
                **{new: trainer[old] for old, new in OLD_TRAINER_SAMPLER_KEYS.items()
                   if old in trainer}}
    return SamplerSpec.from_config(node).one_step_count("the training grids and periodic FID")


def named_sampler(name: str, key: str = "sampler") -> SamplerSpec:
    """The spec ``conf/sampler/<name>.yaml`` states (what ``sampler=<name>`` gives)."""
    check_sampler(name, key)
    return SamplerSpec.from_config(OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml"), key)
