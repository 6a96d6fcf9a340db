"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") on an ``AttentionUNet``: spatial control of a frozen, trained model.

A trainable copy of the base network's encoder (its time embedding, input convolution, down
path and middle block, starting from the base's weights) reads x_t plus the control image,
which a small hint encoder (three 3x3 convolutions with SiLU, then a zero-initialised one)
maps to the input convolution's width and adds to its output. Every feature map the copy
leaves for a skip connection, and its middle block's output, goes through its own
zero-initialised 1x1 convolution and is added to the base's skip (the decoder's input) and
middle output, times ``control_scale``. The zero convolutions make the adapted network the
base network exactly at the start of training (and at ``control_scale`` 0 always); the base
stays frozen, so the control cannot cost what it already knows.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffusion.models.layers import crop_padding, pad_to_multiple, zero_init
from diffusion.models.unet_attn import AttentionUNet


class ControlNet(nn.Module):
    """``base`` (an ``AttentionUNet``, frozen) under the control of ``control_channels``-channel
    images; ``forward(x, t, y=None, control=..., control_scale=1.0)``."""

    def __init__(self, base: AttentionUNet, control_channels: int,
                 hint_channels: tuple[int, int] = (16, 32)):
        super().__init__()
        if not isinstance(base, AttentionUNet):
            raise ValueError(f"ControlNet adapts an AttentionUNet (model=unet_attn); got "
                             f"{type(base).__name__}.")
        if base.cond_channels:
            raise ValueError("ControlNet adapts a network without cond_channels (not a "
                             "cascade's super-resolution stage).")
        self.base = base.requires_grad_(False)
        self.control_channels = int(control_channels)
        # the trainable copy of the encoder, from the base's weights
        self.time_embed = copy.deepcopy(base.time_embed).requires_grad_(True)
        self.conv_in = copy.deepcopy(base.conv_in).requires_grad_(True)
        self.down = copy.deepcopy(base.down).requires_grad_(True)
        self.middle = copy.deepcopy(base.middle).requires_grad_(True)
        width = base.conv_in.out_channels
        a, b = hint_channels
        self.hint = nn.Sequential(
            nn.Conv2d(self.control_channels, a, 3, padding=1), nn.SiLU(),
            nn.Conv2d(a, a, 3, padding=1), nn.SiLU(),
            nn.Conv2d(a, b, 3, padding=1), nn.SiLU(),
            zero_init(nn.Conv2d(b, width, 3, padding=1)))
        skip_widths = [base.conv_in.out_channels] + [_width(stage) for stage in base.down]
        self.zero_skips = nn.ModuleList(zero_init(nn.Conv2d(w, w, 1)) for w in skip_widths)
        middle_width = _width(base.middle)
        self.zero_middle = zero_init(nn.Conv2d(middle_width, middle_width, 1))

    @property
    def num_classes(self) -> int | None:
        return self.base.num_classes

    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    def train(self, mode: bool = True):
        """The base stays in eval mode (its dropout off): it is frozen, not trained."""
        super().train(mode)
        self.base.eval()
        return self

    def residuals(self, x: torch.Tensor, emb: torch.Tensor, control: torch.Tensor
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The additions to the base's skips and middle output for padded ``x``."""
        h = self.conv_in(x) + self.hint(control.to(x.dtype))
        skips = [self.zero_skips[0](h)]
        for stage, zero in zip(self.down, self.zero_skips[1:], strict=True):
            h = stage(h, emb)
            skips.append(zero(h))
        return skips, self.zero_middle(self.middle(h, emb))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                control: torch.Tensor | None = None, control_scale: float = 1.0
                ) -> torch.Tensor:
        expected = (x.shape[0], self.control_channels, *x.shape[2:])
        if control is None or tuple(control.shape) != expected:
            got = "none" if control is None else tuple(control.shape)
            raise ValueError(f"this network is under control: pass control of shape "
                             f"{expected}; got {got}.")
        base = self.base
        emb_base = base.time_embed(t, x, y)
        emb = self.time_embed(t, x, y)
        multiple = 2**base.num_downsamples
        padded, pad = pad_to_multiple(x, multiple)
        control, _ = pad_to_multiple(control, multiple)
        skips, middle = self.residuals(padded, emb, control)
        if control_scale != 1.0:
            skips = [s * control_scale for s in skips]
            middle = middle * control_scale
        return crop_padding(base.denoise(padded, emb_base, control=(skips, middle)), pad)


def _width(stage: nn.Module) -> int:
    """The output width of an encoder stage (its last layer with channels)."""
    for layer in reversed(list(stage.modules())):
        if isinstance(layer, nn.Conv2d):
            return layer.out_channels
    raise ValueError(f"cannot tell the width of {type(stage).__name__}.")
