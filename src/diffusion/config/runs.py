"""A run folder's config for the config layer: read by ``diffusion.runs.load`` (plain YAML,
no Hydra) and handed on as an OmegaConf node (``build`` maps earlier versions' targets)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion.runs.load import read_config


def run_config(run: str | Path, key: str = "run") -> DictConfig:
    """The config ``run`` started with (``key`` names the option that passed it)."""
    return OmegaConf.create(read_config(run, key))
