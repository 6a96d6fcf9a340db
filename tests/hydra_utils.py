"""Compose the project's real configs in-process, as the entry points would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from diffusion.config.paths import CONF_DIR


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The composed job config (without the ``hydra`` node), with HydraConfig set so
    ``${hydra:...}`` interpolations resolve."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def debug_overrides(data_root: Path, *extra: str) -> list[str]:
    """A few-step CPU run on the tiny test data, with no external logger."""
    return ["trainer=debug", "sampler.steps=2", "logger=none", f"paths.data_dir={data_root}",
            "data.batch_size=8", "data.num_workers=0", *extra]
