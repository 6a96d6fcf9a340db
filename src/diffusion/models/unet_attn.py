"""The DDPM / improved-DDPM UNet (Ho et al. 2020; Nichol & Dhariwal 2021).

Residual blocks conditioned on the time (and optional class) embedding,
self-attention at chosen resolutions and in the middle, concatenated skips
from every block of the encoder. Residual and output convolutions start at
zero, so the untrained network is a stack of identities with a zero output,
which keeps early training stable. With base 128, mult (1, 2, 2, 2), two
blocks per level, attention at 16 and dropout 0.1 this is the 35.7M-parameter
CIFAR-10 network of the DDPM paper.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.models.checks import (
    check_backbone,
    check_dropout,
    check_int_tuple,
    check_norm_groups,
    check_positive_int,
)
from diffusion.models.layers import (
    AttentionBlock,
    Backbone,
    Downsample,
    ResidualBlock,
    TimeMLP,
    Upsample,
    level_resolutions,
    zero_init,
)


class EmbedSequential(nn.Sequential):
    """A Sequential that hands the conditioning vector to the residual blocks in it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResidualBlock) else layer(x)
        return x


class AttentionUNet(Backbone):
    """DDPM UNet with residual blocks and multi-head self-attention.

    `attention_resolutions` names feature-map sides (16 means the 16x16 level of
    an `image_size` input, after the internal padding to a multiple of
    2 ** (len(channel_mult) - 1)); None puts it one halving down (16 for 32x32,
    14 for 28x28), and the middle block always attends. `head_channels`, when
    given, fixes the width per head and overrides `num_heads` (improved DDPM).
    `resblock_updown` resamples inside residual blocks instead of with a (conv)
    resample layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] | None = None,
        num_heads: int = 4,
        head_channels: int | None = None,
        dropout: float = 0.1,
        num_classes: int | None = None,
        norm_groups: int = 32,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        conv_resample: bool = True,
    ):
        super().__init__()
        args = check_backbone(in_channels, out_channels, image_size, base_channels, channel_mult,
                              num_classes)
        in_channels, out_channels, widths = args.in_channels, args.out_channels, args.widths
        mult = args.channel_mult
        check_positive_int("num_res_blocks", num_res_blocks)
        check_norm_groups(norm_groups, widths)
        dropout = check_dropout(dropout)
        resolutions = level_resolutions(image_size, len(mult))
        if attention_resolutions is None:  # one halving down: 16 for 32x32, 14 for MNIST
            attention_resolutions = (resolutions[min(1, len(mult) - 1)],)
        attention_resolutions = check_int_tuple(
            "attention_resolutions", attention_resolutions, allow_empty=True
        )
        if not set(attention_resolutions) <= set(resolutions):
            raise ValueError(
                f"attention_resolutions must be feature-map sizes of this network, "
                f"a subset of {resolutions} for image_size={image_size} and "
                f"{len(mult)} levels; got {attention_resolutions}."
            )
        attention_levels = {resolutions.index(r) for r in attention_resolutions}
        heads = self._heads_per_width(
            num_heads, head_channels, {widths[i] for i in attention_levels} | {widths[-1]}
        )

        self._levels(args)
        embed_dim = 4 * base_channels
        self.time_embed = TimeMLP(base_channels, embed_dim, args.num_classes)

        def res(cin: int, cout: int, resample: str | None = None) -> ResidualBlock:
            return ResidualBlock(
                cin,
                cout,
                embed_dim,
                dropout=dropout,
                norm_groups=norm_groups,
                use_scale_shift_norm=use_scale_shift_norm,
                resample=resample,
            )

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, heads[c], norm_groups)

        def resample(c: int, direction: str) -> nn.Module:
            if resblock_updown:
                return res(c, c, resample=direction)
            return (Downsample if direction == "down" else Upsample)(c, conv_resample)

        ch = widths[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_widths = [ch]
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers = [res(ch, width)] + ([attn(width)] if level in attention_levels else [])
                self.down.append(EmbedSequential(*layers))
                ch = width
                skip_widths.append(ch)
            if level < len(widths) - 1:
                self.down.append(EmbedSequential(resample(ch, "down")))
                skip_widths.append(ch)

        self.middle = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_widths.pop(), width)]
                ch = width
                if level in attention_levels:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(resample(ch, "up"))
                self.up.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch),
            nn.SiLU(),
            zero_init(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    @staticmethod
    def _heads_per_width(
        num_heads: int, head_channels: int | None, widths: set[int]
    ) -> dict[int, int]:
        """Number of attention heads at each attended width, checking that heads divide it."""
        if head_channels is not None:
            check_positive_int("head_channels", head_channels)
            if any(w % head_channels for w in widths):
                raise ValueError(
                    f"head_channels={head_channels} must divide every attended "
                    f"width {sorted(widths)}."
                )
            return {w: w // head_channels for w in widths}
        check_positive_int("num_heads", num_heads)
        if any(w % num_heads for w in widths):
            raise ValueError(
                f"num_heads={num_heads} must divide every attended width {sorted(widths)}."
            )
        return dict.fromkeys(widths, num_heads)

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
