"""``control_image=`` and ``control_scale=`` of the commands that sample a ControlNet run
(``control=edges|blur|mask``): checked against the run before anything loads, and the batch
of control images they name."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_number
from diffusion.editing.sources import read_input
from diffusion.errors import ConfigError
from diffusion.runs.load import control_images


def check_control_options(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """A ControlNet run needs ``control_image``; any other run refuses it and
    ``control_scale``."""
    control = control_images(OmegaConf.to_container(run_cfg, resolve=True))
    image, scale = cfg.get("control_image"), cfg.get("control_scale")
    if control is None:
        for key, value in (("control_image", image), ("control_scale", scale)):
            if value is not None:
                raise ConfigError(f"{key}= is for a ControlNet run (trained with control=edges|"
                                  f"blur|mask); run={cfg.run} has none: drop it.")
        return
    if image is None:
        raise ConfigError(f"run={cfg.run} is a ControlNet ({control.kind}): pass control_image="
                          f"test (the run's test split), an image file or a folder of images.")
    if cfg.get("upsample"):
        raise ConfigError("a ControlNet run is no cascade's base: drop upsample=.")
    for value in control_scales(cfg):
        if value is not None:
            check_number("control_scale", value, minimum=0)


def control_scales(cfg: DictConfig) -> list[float | None]:
    """``control_scale`` as a list: one value or several (``evaluate``); [None]: the run's."""
    scale = cfg.get("control_scale")
    if scale is None:
        return [None]
    return list(scale) if OmegaConf.is_list(scale) or isinstance(scale, list | tuple) else [scale]


def control_batch(cfg: DictConfig, pipe) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                 torch.Tensor | None]:
    """(controls, indices, sources) for the ``n`` draws of ``control_image``: its images
    repeated over n, each with its index (which places a mask's rectangle), and the images
    the controls were computed from (in [-1, 1]); three Nones for a run without a ControlNet."""
    if pipe.control is None:
        return None, None, None
    run_cfg = OmegaConf.load(f"{cfg.run}/config.yaml")
    try:
        sources = read_input(str(cfg.control_image), cfg.n, 0, run_cfg.data,
                             cfg.get("data_root"))
    except ValueError as exc:
        raise ConfigError(str(exc).replace("input", "control_image", 1)) from None
    index = torch.arange(cfg.n) % len(sources)
    return pipe.control(sources[index].float(), index), index, sources[index]
