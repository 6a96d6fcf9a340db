"""diffusers' ``UNet2DModel`` as one of our backbones (``model=diffusers_unet``).

Built from the same settings as ``AttentionUNet`` (widths, blocks per level, attention
levels, heads, dropout, groups, class labels) mapped level by level onto diffusers' blocks
(``unet2d_arguments``), or loaded from a diffusers folder (``pretrained=``) to fine-tune it.
It is called as every backbone is, ``model(x, t, y=None)``: labels go in as diffusers'
``class_labels``, with index ``num_classes`` the null label of classifier-free guidance, as in
our networks. ``diffusion.export`` writes its EMA weights as a folder plain diffusers loads
(``DDPMPipeline.from_pretrained``). Needs the optional ``diffusers`` package.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.models.layers import (
    broadcast_timesteps,
    crop_padding,
    level_resolutions,
    pad_to_multiple,
)


def unet2d_arguments(m: Mapping[str, Any], channels: int, image_size: int) -> dict[str, Any]:
    """Our UNet settings ``m`` (an ``AttentionUNet`` or ``UNet`` config: ``base_channels``,
    ``channel_mult``, ``num_res_blocks``, ``attention_resolutions``, ...) as the arguments of
    diffusers' ``UNet2DModel``: the same widths, blocks per level and attention levels."""
    mult = tuple(m["channel_mult"])
    widths = tuple(m["base_channels"] * k for k in mult)
    sides = level_resolutions(image_size, len(mult))
    attention = str(m.get("_target_", "AttentionUNet")).endswith(("AttentionUNet",
                                                                 "DiffusersUNet"))
    attended: set[int] = set()
    head_dim = None
    if attention:
        resolutions = m.get("attention_resolutions") or (sides[min(1, len(mult) - 1)],)
        unknown = [r for r in resolutions if r not in sides]
        if unknown:
            raise ConfigError(f"model.attention_resolutions {list(unknown)} are not among the "
                              f"network's levels {sides}: choose from those.")
        attended = {sides.index(r) for r in resolutions}
        first = widths[min(attended)] if attended else widths[-1]
        head_dim = m.get("head_channels") or first // m.get("num_heads", 1)
    config = {
        "sample_size": sides[0], "in_channels": channels, "out_channels": channels,
        "layers_per_block": m.get("num_res_blocks", 2), "block_out_channels": widths,
        "down_block_types": tuple("AttnDownBlock2D" if i in attended else "DownBlock2D"
                                  for i in range(len(mult))),
        "up_block_types": tuple("AttnUpBlock2D" if i in attended else "UpBlock2D"
                                for i in reversed(range(len(mult)))),
        "attention_head_dim": head_dim, "add_attention": attention,
        "norm_num_groups": m.get("norm_groups", 8), "dropout": float(m.get("dropout") or 0.0),
    }
    if m.get("use_scale_shift_norm"):
        config["resnet_time_scale_shift"] = "scale_shift"
    if m.get("resblock_updown"):
        config.update(downsample_type="resnet", upsample_type="resnet")
    if m.get("num_classes") is not None:
        config["num_class_embeds"] = m["num_classes"] + 1  # + the null label
    return config


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every non-string sequence a list."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def weights_follow(node: Mapping[str, Any]) -> dict[str, Any]:
    """A model config node for a network whose weights a checkpoint brings: where a fine-tuning
    run recorded its network (``unet_config``), the ``pretrained`` folder is not needed."""
    node = dict(node)
    if node.get("unet_config") and node.get("pretrained"):
        node["pretrained"] = None
    return node


def _unet2d():
    try:
        from diffusers import UNet2DModel  # the optional dependency, only when asked for
    except ImportError:
        raise ConfigError("model=diffusers_unet needs diffusers: pip install diffusers (or "
                          "pip install -e '.[test]').") from None
    # diffusers before 0.33 calls safetensors.torch.save_file in save_pretrained without
    # importing the submodule (elsewhere something else usually has)
    importlib.import_module("safetensors.torch")
    return UNet2DModel


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` (``self.net``) behind our backbone interface."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] | None = None, num_heads: int = 4,
                 head_channels: int | None = None, dropout: float = 0.0, norm_groups: int = 32,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 num_classes: int | None = None, pretrained: str | None = None,
                 out_channels: int | None = None,
                 unet_config: Mapping[str, Any] | None = None):
        """Our UNet settings, or ``pretrained`` (a diffusers folder: its network and weights),
        or ``unet_config`` (a ``UNet2DModel`` config: its network, initial weights; what a
        fine-tuning run records, so that its checkpoints load without the folder)."""
        super().__init__()
        unet2d = _unet2d()
        self.num_classes = num_classes
        self.in_channels = in_channels
        if pretrained or unet_config:
            if pretrained:
                self.net = self._pretrained(unet2d, pretrained, in_channels, image_size,
                                            num_classes, out_channels)
            else:
                self.net = unet2d.from_config(_plain(unet_config))
            self.num_downsamples = len(self.net.config.block_out_channels) - 1
            return
        settings = dict(base_channels=base_channels, channel_mult=channel_mult,
                        num_res_blocks=num_res_blocks, num_heads=num_heads,
                        attention_resolutions=attention_resolutions, head_channels=head_channels,
                        dropout=dropout, norm_groups=norm_groups, num_classes=num_classes,
                        use_scale_shift_norm=use_scale_shift_norm,
                        resblock_updown=resblock_updown, _target_="DiffusersUNet")
        for width in (base_channels * k for k in channel_mult):
            if width % norm_groups:
                raise ConfigError(f"model.norm_groups={norm_groups} must divide every level's "
                                  f"width (base_channels x channel_mult); {width} is not.")
        arguments = unet2d_arguments(settings, in_channels, image_size)
        if out_channels is not None:
            arguments["out_channels"] = check_int("out_channels", out_channels)
        self.net = unet2d(**arguments)
        self.num_downsamples = len(channel_mult) - 1

    @staticmethod
    def _pretrained(unet2d, folder: str, in_channels: int, image_size: int,
                    num_classes: int | None, out_channels: int | None) -> nn.Module:
        path = Path(folder)
        if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
            path = path / "unet"  # a pipeline's folder
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained={folder} holds no diffusers UNet2DModel "
                              "(config.json): pass a folder that save_pretrained wrote.")
        if torch.empty(0).device.type == "meta":  # a check of the shapes: no weights read
            net = unet2d.from_config(unet2d.load_config(path))
        else:
            net = unet2d.from_pretrained(path)
        config = net.config
        wanted = {"in_channels": in_channels, "sample_size": image_size,
                  "num_class_embeds": None if num_classes is None else num_classes + 1,
                  "out_channels": config.get("out_channels") if out_channels is None
                  else out_channels}
        for key, value in wanted.items():
            if config.get(key) != value:
                raise ConfigError(f"model.pretrained={folder} has {key}={config.get(key)} but "
                                  f"this run needs {value}: choose data (and conditioning) that "
                                  "fit the network, or another network.")
        return net

    def unet_config(self) -> dict[str, Any]:
        """The network's ``UNet2DModel`` config as plain data (what ``unet_config`` takes)."""
        return json.loads(json.dumps({k: v for k, v in self.net.config.items()
                                      if not k.startswith("_")}))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """As our backbones: x of any height and width (padded to what the halvings need and
        cropped back), t one timestep or one per sample, y labels or None (the null label)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, height, width), "
                             f"got {tuple(x.shape)}.")
        t = broadcast_timesteps(t, x)
        labels = {}
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but the model was built with num_classes=None; "
                                 "set num_classes to train a class-conditional model.")
        else:
            labels["class_labels"] = y if y is not None else torch.full(
                (x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        x, pad = pad_to_multiple(x, 2**self.num_downsamples)
        return crop_padding(self.net(x, t, **labels).sample, pad)
