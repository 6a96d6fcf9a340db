"""The minimal convolutional UNet of the diffusion tutorials, made time-aware.

A handful of 5x5 convolutions down (max-pool between them) and up (nearest
upsampling, skips *added* rather than concatenated), SiLU throughout. The
tutorial version ignores t and only learns to denoise; here the timestep
embedding is projected to each layer's width and added to its feature map, so
it can predict noise at every step. It is the baseline: small, fast, and a
sanity check for schedulers and trainers before the bigger backbones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.checks import check_backbone, check_positive_int
from diffusion.models.layers import Backbone, TimeMLP

KERNEL_SIZE = 5  # wide kernels give a shallow network a useful receptive field


class BasicUNet(Backbone):
    """Conv-only UNet: one conv per level down and up, additive skips.

    Widths are `base_channels * m` for m in `channel_mult`; there is one
    max-pool between consecutive levels, so inputs are padded internally to a
    multiple of 2 ** (len(channel_mult) - 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 32,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        time_embed_dim: int = 128,
        num_classes: int | None = None,
        cond_channels: int = 0,
    ):
        super().__init__()
        args = check_backbone(in_channels, out_channels, image_size, base_channels, channel_mult,
                              num_classes, cond_channels)
        check_positive_int("time_embed_dim", time_embed_dim, minimum=2)
        self._levels(args)
        in_channels, out_channels, widths = args.in_channels, args.out_channels, args.widths
        self.time_embed = TimeMLP(time_embed_dim, time_embed_dim, args.num_classes,
                                  levels=args.cond_channels > 0)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, KERNEL_SIZE, padding=KERNEL_SIZE // 2)

        self.down = nn.ModuleList(
            conv(c_in, c_out)
            for c_in, c_out in zip([args.input_channels, *widths], widths, strict=False)
        )
        up_widths = widths[::-1]
        self.up = nn.ModuleList(
            conv(c_in, c_out) for c_in, c_out in zip(up_widths, up_widths[1:], strict=False)
        )
        # One projection of the time embedding per hidden feature map.
        self.time_proj = nn.ModuleList(
            nn.Linear(time_embed_dim, c) for c in [*widths, *up_widths[1:]]
        )
        self.out = conv(widths[0], out_channels)

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        layers = [*self.down, *self.up]
        shifts = [proj(emb)[:, :, None, None] for proj in self.time_proj]
        skips = []
        for i, layer in enumerate(layers):
            if i > len(self.down):  # up path: back to the next resolution, add the skip
                x = F.interpolate(x, scale_factor=2.0, mode="nearest") + skips.pop()
            x = F.silu(layer(x) + shifts[i])
            if i < len(self.down) - 1:  # down path: keep for the skip, then halve
                skips.append(x)
                x = F.max_pool2d(x, 2)
        if skips:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") + skips.pop()
        return self.out(x)
