"""Building blocks shared by the backbones.

Every backbone takes `forward(x, t, y=None)`; the pieces that make that contract
hold (timestep broadcasting, the time/label embedding, padding to a size the
down-sampling path can halve) live here once, so the three networks differ only in
how they arrange convolutions. Their argument checks are in `checks.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from diffusion.models.checks import BackboneArgs, check_positive_int

# ---------------------------------------------------------------- inputs


def broadcast_timesteps(t, x: torch.Tensor) -> torch.Tensor:
    """Turn an int, float, 0-d or (B,) tensor into a float tensor of shape (B,) on x's device.

    Samplers call the model with one scalar step for the whole batch; training
    passes one step per sample. Accepting both keeps every caller simple.
    """
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0 or t.shape == (1,):
        return t.reshape(1).expand(x.shape[0]).float()
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape (batch,) = ({x.shape[0]},), got {tuple(t.shape)}."
        )
    return t.float()


def pad_to_multiple(
    x: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad H and W (centred) up to a multiple of `multiple`; return the pad to undo it.

    Each down-sampling halves the feature map, so H and W must divide by
    2**num_downsamples for the skips to line up: 28x28 MNIST becomes 32x32 for a
    three-down network and stays 28x28 for a two-down one. Zeros are what the
    convolutions already pad with, and training and sampling pad identically.
    """
    h, w = x.shape[-2:]
    dh, dw = -h % multiple, -w % multiple
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    if dh or dw:
        x = F.pad(x, pad)
    return x, pad


def crop_padding(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`."""
    left, right, top, bottom = pad
    if left or right or top or bottom:
        x = x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
    return x


def level_resolutions(image_size: int, num_levels: int) -> list[int]:
    """Feature-map side at each level for an `image_size` input (after padding)."""
    multiple = 2 ** (num_levels - 1)
    padded = -(-image_size // multiple) * multiple
    return [padded // 2**i for i in range(num_levels)]


# ---------------------------------------------------------------- embeddings


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer position encoding of the (possibly fractional) timestep.

    Geometric frequencies from 1 to 1/max_period let the network resolve both
    neighbouring steps and the coarse stage of the noise process.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        self.dim = check_positive_int("time embedding dim", dim, minimum=2)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb


LEVEL_SCALE = 1000.0
"""A conditioning image's noise level in [0, 1] is embedded as a timestep of 0 to 1000."""


class TimeMLP(nn.Module):
    """Timestep (and optional class label) -> one conditioning vector per sample.

    The sinusoidal code goes through a two-layer MLP (DDPM) so the network can
    learn which features of t matter. With `num_classes`, a label embedding is
    added; index `num_classes` is the "null" label used when `y` is None (the
    unconditional prediction that classifier-free guidance needs once a model is
    trained with labels dropped to it).
    """

    def __init__(self, sinusoid_dim: int, embed_dim: int, num_classes: int | None = None,
                 levels: bool = False):
        super().__init__()
        self.sinusoid = SinusoidalTimeEmbedding(sinusoid_dim)
        self.mlp = nn.Sequential(
            nn.Linear(sinusoid_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.num_classes = num_classes
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, embed_dim)
        # the noise level of a conditioning image (a cascade's augmentation), in [0, 1]
        self.level = (nn.Sequential(nn.Linear(sinusoid_dim, embed_dim), nn.SiLU(),
                                    nn.Linear(embed_dim, embed_dim)) if levels else None)

    def forward(self, t, x: torch.Tensor, y: torch.Tensor | None = None,
                level=None) -> torch.Tensor:
        emb = self.mlp(self.sinusoid(broadcast_timesteps(t, x)))
        if self.level is not None:  # level None: an unaugmented conditioning image
            level = broadcast_timesteps(0.0 if level is None else level, x)
            emb = emb + self.level(self.sinusoid(LEVEL_SCALE * level))
        if self.label is None:
            if y is not None:
                raise ValueError(
                    "y was given but the model was built with num_classes=None; "
                    "set num_classes to train a class-conditional model."
                )
            return emb
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return emb + self.label(y)


# ---------------------------------------------------------------- blocks


class Backbone(nn.Module):
    """The shared `forward(x, t, y=None)` contract around a network's `denoise(x, emb)`.

    Pads any H x W to what `num_downsamples` halvings need, embeds (t, y) with
    `self.time_embed` (a TimeMLP), runs the subclass and crops back, so each
    network only describes its layers.

    A network built with `cond_channels` > 0 also takes a conditioning image `cond`
    (B, cond_channels, H, W), concatenated to x as extra input channels (SR3, Imagen's
    super-resolution stages), and the noise `level` in [0, 1] it was augmented with (one per
    sample or one for all; None: 0), embedded beside t.
    """

    in_channels: int
    cond_channels: int = 0
    num_downsamples: int
    time_embed: TimeMLP

    def _levels(self, args: BackboneArgs) -> None:
        """Record what `forward` needs from the checked shared arguments."""
        self.in_channels = args.in_channels
        self.cond_channels = args.cond_channels
        self.num_downsamples = len(args.channel_mult) - 1

    @property
    def num_classes(self) -> int | None:
        """Labels 0..num_classes-1 condition the model; None for an unconditional one."""
        return self.time_embed.num_classes

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, level=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (batch, {self.in_channels}, height, width), "
                f"got {tuple(x.shape)}."
            )
        emb = self.time_embed(t, x, y, level) if self.cond_channels else self.time_embed(t, x, y)
        if self.cond_channels:
            expected = (x.shape[0], self.cond_channels, *x.shape[2:])
            if cond is None or tuple(cond.shape) != expected:
                got = "none" if cond is None else tuple(cond.shape)
                raise ValueError(f"this network is conditioned on an image: pass cond of shape "
                                 f"{expected}; got {got}.")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond was given but the network was built with cond_channels=0.")
        x, pad = pad_to_multiple(x, 2**self.num_downsamples)
        return crop_padding(self.denoise(x, emb), pad)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity (DDPM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResidualBlock(nn.Module):
    """DDPM residual block: GroupNorm-SiLU-conv, add the time embedding, again with dropout.

    `use_scale_shift_norm` (improved DDPM) lets the embedding scale and shift the
    second normalisation instead of being added, which conditions more strongly.
    `resample="down"|"up"` changes resolution inside the block (improved DDPM's
    `resblock_updown`) so down/up steps get a residual path too.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        *,
        dropout: float = 0.0,
        norm_groups: int = 32,
        use_scale_shift_norm: bool = False,
        resample: str | None = None,
    ):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}.")
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = nn.GroupNorm(norm_groups, in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Sequential(
            nn.SiLU(), nn.Linear(embed_dim, out_channels * (2 if use_scale_shift_norm else 1))
        )
        self.out_norm = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        e = self.embed(emb)[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, as a residual branch (DDPM).

    Convolutions only see a neighbourhood; attention at a low resolution lets
    every position see the whole image at modest cost.

    The 1x1 projections are kept as convolution weights (the checkpoint format)
    but applied as matrix multiplies over pixel tokens: q, k and v then come out
    with a unit stride along the head dimension, which the fused
    scaled-dot-product kernels need (flash attention, on the CPU too); strided
    inputs send PyTorch to its much slower unfused path. A projection wrapped by
    another module (a LoRA adapter: ``diffusion.models.lora``) runs its own forward.
    """

    def __init__(self, channels: int, num_heads: int = 1, norm_groups: int = 32):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        qkv = _project(self.qkv, tokens, height)
        q, k, v = rearrange(qkv, "b n (three heads d) -> three b heads n d", three=3,
                            heads=self.num_heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> b n (heads d)")
        out = _project(self.proj, out, height)
        return x + rearrange(out, "b (h w) c -> b c h w", h=height)


def _project(layer: nn.Module, tokens: torch.Tensor, height: int) -> torch.Tensor:
    """A 1x1 convolution over pixel tokens (B, HW, C): a matrix multiply for a plain
    ``Conv2d``; any other module (an adapted layer) applied to the image layout."""
    if type(layer) is nn.Conv2d:
        return F.linear(tokens, layer.weight.flatten(1), layer.bias)
    image = rearrange(tokens, "b (h w) c -> b c h w", h=height)
    return rearrange(layer(image), "b c h w -> b (h w) c").contiguous()


class Downsample(nn.Module):
    """Halve H and W: a learned stride-2 conv (DDPM) or parameter-free average pooling."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest neighbour, then (optionally) a conv.

    Nearest + conv avoids the checkerboard artefacts of transposed convolutions.
    """

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
