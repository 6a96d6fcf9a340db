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

from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Blocks:
    """Builds the UNet's blocks from the settings they all share, so that the encoder and
    decoder builders only say which widths go where."""

    embed_dim: int
    dropout: float
    norm_groups: int
    use_scale_shift_norm: bool
    heads: dict[int, int]
    resblock_updown: bool
    conv_resample: bool

    def res(self, cin: int, cout: int, resample: str | None = None) -> ResidualBlock:
        """A residual block conditioned on the time (and class) embedding."""
        return ResidualBlock(
            cin,
            cout,
            self.embed_dim,
            dropout=self.dropout,
            norm_groups=self.norm_groups,
            use_scale_shift_norm=self.use_scale_shift_norm,
            resample=resample,
        )

    def attn(self, c: int) -> AttentionBlock:
        """Self-attention over a width-``c`` feature map, with the heads chosen for ``c``."""
        return AttentionBlock(c, self.heads[c], self.norm_groups)

    def resample(self, c: int, direction: str) -> nn.Module:
        """Halve (``down``) or double (``up``) the side: inside a residual block with
        ``resblock_updown``, else with a (conv) resample layer."""
        if self.resblock_updown:
            return self.res(c, c, resample=direction)
        return (Downsample if direction == "down" else Upsample)(c, self.conv_resample)


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
        cond_channels: int = 0,
    ):
        super().__init__()
        args = check_backbone(in_channels, out_channels, image_size, base_channels, channel_mult,
                              num_classes, cond_channels)
        widths = args.widths
        check_positive_int("num_res_blocks", num_res_blocks)
        check_norm_groups(norm_groups, widths)
        dropout = check_dropout(dropout)
        attention_levels = self._attention_levels(
            attention_resolutions, image_size, len(args.channel_mult)
        )
        heads = self._heads_per_width(
            num_heads, head_channels, {widths[i] for i in attention_levels} | {widths[-1]}
        )

        self._levels(args)
        embed_dim = 4 * base_channels
        self.time_embed = TimeMLP(base_channels, embed_dim, args.num_classes,
                                  levels=args.cond_channels > 0)
        blocks = _Blocks(embed_dim, dropout, norm_groups, use_scale_shift_norm, heads,
                         resblock_updown, conv_resample)
        # built (so initialised from the RNG) and registered in this order, which is what
        # seeded weights and the state_dict keys of saved checkpoints depend on
        self.conv_in = nn.Conv2d(args.input_channels, widths[0], 3, padding=1)
        self.down, skip_widths = self._encoder(blocks, widths, num_res_blocks, attention_levels)
        ch = widths[-1]
        self.middle = EmbedSequential(blocks.res(ch, ch), blocks.attn(ch), blocks.res(ch, ch))
        self.up = self._decoder(blocks, widths, num_res_blocks, attention_levels, skip_widths)
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, widths[0]),
            nn.SiLU(),
            zero_init(nn.Conv2d(widths[0], args.out_channels, 3, padding=1)),
        )

    @staticmethod
    def _attention_levels(
        attention_resolutions: tuple[int, ...] | None, image_size: int, num_levels: int
    ) -> set[int]:
        """Indices of the levels that attend, from the feature-map sides the user names (sides
        are what papers quote; the network is built level by level)."""
        resolutions = level_resolutions(image_size, num_levels)
        if attention_resolutions is None:  # one halving down: 16 for 32x32, 14 for MNIST
            attention_resolutions = (resolutions[min(1, num_levels - 1)],)
        attention_resolutions = check_int_tuple(
            "attention_resolutions", attention_resolutions, allow_empty=True
        )
        if not set(attention_resolutions) <= set(resolutions):
            raise ValueError(
                f"attention_resolutions must be feature-map sizes of this network, "
                f"a subset of {resolutions} for image_size={image_size} and "
                f"{num_levels} levels; got {attention_resolutions}."
            )
        return {resolutions.index(r) for r in attention_resolutions}

    @staticmethod
    def _encoder(
        blocks: _Blocks, widths: list[int], num_res_blocks: int, attention_levels: set[int]
    ) -> tuple[nn.ModuleList, list[int]]:
        """The down path, and the width of every skip it leaves for the up path (the input
        convolution's first), which the decoder needs to size its concatenations."""
        ch = widths[0]
        skip_widths = [ch]
        down = nn.ModuleList()
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers = [blocks.res(ch, width)]
                if level in attention_levels:
                    layers.append(blocks.attn(width))
                down.append(EmbedSequential(*layers))
                ch = width
                skip_widths.append(ch)
            if level < len(widths) - 1:
                down.append(EmbedSequential(blocks.resample(ch, "down")))
                skip_widths.append(ch)
        return down, skip_widths

    @staticmethod
    def _decoder(
        blocks: _Blocks,
        widths: list[int],
        num_res_blocks: int,
        attention_levels: set[int],
        skip_widths: list[int],
    ) -> nn.ModuleList:
        """The up path: one block more per level than the encoder, so that every skip (taken
        from the end of ``skip_widths``) is concatenated back exactly once."""
        ch = widths[-1]
        up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                layers = [blocks.res(ch + skip_widths.pop(), width)]
                ch = width
                if level in attention_levels:
                    layers.append(blocks.attn(ch))
                if level and i == num_res_blocks:
                    layers.append(blocks.resample(ch, "up"))
                up.append(EmbedSequential(*layers))
        return up

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

    def denoise(self, x: torch.Tensor, emb: torch.Tensor,
                control: tuple[list[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        """``control``: a ControlNet's additions to every skip and to the middle block's
        output (``diffusion.models.controlnet``)."""
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        if control is not None:
            added, middle = control
            skips = [skip + extra for skip, extra in zip(skips, added, strict=True)]
            h = h + middle
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
