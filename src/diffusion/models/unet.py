"""A classic UNet with time conditioning and no attention.

Double-conv blocks (conv-GroupNorm-activation, twice) at every level, max-pool
down, nearest + conv up, skips *concatenated* (Ronneberger et al.), and the
learned time embedding added inside every block. The middle ground between the
tutorial BasicUNet and the DDPM AttentionUNet: GroupNorm makes it train stably
at real widths, and with no attention its cost grows linearly in pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.checks import (
    check_backbone,
    check_dropout,
    check_norm_groups,
    check_positive_int,
)
from diffusion.models.layers import Backbone, TimeMLP, Upsample

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


class DoubleConv(nn.Module):
    """conv-norm-act, add the time embedding, dropout, conv-norm-act.

    The convolutions have no bias: the GroupNorm right after them has its own shift.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        *,
        norm_groups: int,
        activation: str,
        dropout: float,
    ):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.first = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups, out_channels),
            act(),
        )
        self.embed = nn.Linear(embed_dim, out_channels)
        self.second = nn.Sequential(
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups, out_channels),
            act(),
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.first(x) + self.embed(emb)[:, :, None, None].to(x.dtype)
        return self.second(h)


class UNet(Backbone):
    """Encoder-decoder of double-conv blocks with concatenated skips.

    Widths are `base_channels * m` for m in `channel_mult`; the deepest level is
    the bottleneck. Inputs are padded internally to a multiple of
    2 ** (len(channel_mult) - 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        norm_groups: int = 8,
        activation: str = "silu",
        dropout: float = 0.0,
        time_embed_dim: int | None = None,
        num_classes: int | None = None,
        cond_channels: int = 0,
    ):
        super().__init__()
        args = check_backbone(in_channels, out_channels, image_size, base_channels, channel_mult,
                              num_classes, cond_channels)
        in_channels, out_channels, widths = args.in_channels, args.out_channels, args.widths
        check_norm_groups(norm_groups, widths)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
            )
        dropout = check_dropout(dropout)
        time_embed_dim = 4 * base_channels if time_embed_dim is None else time_embed_dim
        check_positive_int("time_embed_dim", time_embed_dim)
        self._levels(args)
        self.time_embed = TimeMLP(base_channels, time_embed_dim, args.num_classes,
                                  levels=args.cond_channels > 0)

        def block(cin: int, cout: int) -> DoubleConv:
            return DoubleConv(
                cin,
                cout,
                time_embed_dim,
                norm_groups=norm_groups,
                activation=activation,
                dropout=dropout,
            )

        self.down = nn.ModuleList(
            block(c_in, c_out)
            for c_in, c_out in zip([args.input_channels, *widths], widths, strict=False)
        )
        # Decoder, deepest first: upsample level i+1, concatenate level i's skip, fuse to width i.
        self.upsample = nn.ModuleList(Upsample(c) for c in widths[:0:-1])
        self.up = nn.ModuleList(
            block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                skips.append(x)
                x = F.max_pool2d(x, 2)
            x = block(x, emb)
        for upsample, block in zip(self.upsample, self.up, strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1), emb)
        return self.out(x)
