"""A noise-aware classifier for classifier guidance (Dhariwal & Nichol 2021): the UNet's
down path with its timestep embedding, then pooling and a linear head.

``classifier(x_t, t) -> logits`` is trained on images noised to a random t, so its
grad_x log p(y | x_t, t) is meaningful all along the reverse process, where a classifier of
clean images would see only noise. Same blocks as ``AttentionUNet``'s encoder (residual
blocks conditioned on the time embedding, attention where asked, a middle block), as in
guided-diffusion's ``EncoderUNetModel`` with its ``adaptive`` pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.models.checks import (
    check_backbone,
    check_int_tuple,
    check_norm_groups,
    check_positive_int,
)
from diffusion.models.layers import (
    AttentionBlock,
    Downsample,
    ResidualBlock,
    TimeMLP,
    level_resolutions,
    pad_to_multiple,
)
from diffusion.models.unet_attn import EmbedSequential


class NoiseAwareClassifier(nn.Module):
    """(x_t, t) -> (B, num_classes) logits; images of ``in_channels`` x ``image_size``^2."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 base_channels: int = 32, channel_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 1, attention_resolutions: tuple[int, ...] = (),
                 num_heads: int = 4, norm_groups: int = 8):
        super().__init__()
        args = check_backbone(in_channels, None, image_size, base_channels, channel_mult,
                              check_positive_int("num_classes", num_classes))
        widths = args.widths
        check_positive_int("num_res_blocks", num_res_blocks)
        check_norm_groups(norm_groups, widths)
        resolutions = level_resolutions(image_size, len(widths))
        attention = set(check_int_tuple("attention_resolutions", attention_resolutions,
                                        allow_empty=True))
        if not attention <= set(resolutions):
            raise ValueError(f"attention_resolutions must be feature-map sizes of this network, "
                             f"a subset of {resolutions}; got {sorted(attention)}.")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_downsamples = len(widths) - 1
        embed_dim = 4 * base_channels
        self.time_embed = TimeMLP(base_channels, embed_dim)

        def res(cin: int, cout: int) -> ResidualBlock:
            return ResidualBlock(cin, cout, embed_dim, norm_groups=norm_groups)

        ch = widths[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        blocks = []
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(res(ch, width))
                ch = width
                if resolutions[level] in attention:
                    blocks.append(AttentionBlock(ch, num_heads, norm_groups))
            if level < len(widths) - 1:
                blocks.append(Downsample(ch))
        self.down = EmbedSequential(*blocks)
        self.middle = EmbedSequential(res(ch, ch), AttentionBlock(ch, num_heads, norm_groups),
                                      res(ch, ch))
        self.head = nn.Sequential(nn.GroupNorm(norm_groups, ch), nn.SiLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, num_classes))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, height, width), "
                             f"got {tuple(x.shape)}.")
        x, _ = pad_to_multiple(x, 2**self.num_downsamples)
        emb = self.time_embed(t, x)
        return self.head(self.middle(self.down(self.conv_in(x), emb), emb))
