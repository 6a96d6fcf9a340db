"""A run folder's config for the config layer: read by ``diffusion.runs.load`` (plain YAML,
no Hydra) and handed on as an OmegaConf node, with earlier versions' targets updated."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion.config.legacy import current_target
from diffusion.runs.load import read_config


def _update_targets(node):
    if isinstance(node, dict):
        return {k: current_target(v) if k == "_target_" else _update_targets(v)
                for k, v in node.items()}
    return [_update_targets(v) for v in node] if isinstance(node, list) else node


def run_config(run: str | Path, key: str = "run") -> DictConfig:
    """The config ``run`` started with (``key`` names the option that passed it)."""
    return OmegaConf.create(_update_targets(read_config(run, key)))
