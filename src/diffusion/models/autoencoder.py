"""A KL-regularised convolutional autoencoder: the first stage of latent diffusion.

Rombach et al. 2022 ("KL-f4", "KL-f8"): an encoder halves the resolution ``len(channel_mult) - 1``
times (the downsampling factor f) and outputs the mean and log-variance of a diagonal Gaussian
over ``latent_channels`` channels; the decoder maps a sample (or the mean) back to pixels. A
small KL weight towards N(0, I) keeps the latent space smooth without making it a VAE's prior;
the scale of the latents is fixed afterwards, by the diffusion run that uses them (unit
variance over its training set).

The layout follows the LDM / diffusers ``AutoencoderKL``: residual blocks without a time input,
stride-2 convolutions down, nearest-neighbour upsampling plus a convolution up, one
self-attention block at the lowest resolution in both halves, GroupNorm and SiLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.layers import AttentionBlock, Downsample, Upsample


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from the encoder's ``2 c`` output channels;
    log-variances are clamped to [-30, 20] as in LDM, so ``exp`` stays finite."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.float().chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(mean, var) || N(0, I)) per sample, summed over the latent's elements."""
        return 0.5 * (self.mean.pow(2) + self.std.pow(2) - 1.0 - self.logvar).flatten(1).sum(1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the input (through a 1x1 conv when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(norm_groups, in_channels), nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(norm_groups, out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


def _middle(channels: int, norm_groups: int, attention: bool) -> nn.Sequential:
    layers: list[nn.Module] = [ResBlock(channels, channels, norm_groups)]
    if attention:
        layers.append(AttentionBlock(channels, num_heads=1, norm_groups=norm_groups))
    layers.append(ResBlock(channels, channels, norm_groups))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Pixels (B, C, H, W) to the Gaussian's moments (B, 2 c, H / f, W / f)."""

    def __init__(self, in_channels: int, latent_channels: int, base_channels: int,
                 channel_mult: Sequence[int], num_res_blocks: int, norm_groups: int,
                 attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        channels = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(channels, base_channels * mult, norm_groups))
                channels = base_channels * mult
            if level < len(channel_mult) - 1:
                layers.append(Downsample(channels))
        self.down = nn.Sequential(*layers)
        self.mid = _middle(channels, norm_groups, attention)
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, channels), nn.SiLU(),
                                 nn.Conv2d(channels, 2 * latent_channels, 3, padding=1))
        self.quant = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.out(self.mid(self.down(self.conv_in(x)))))


class Decoder(nn.Module):
    """Latents (B, c, h, w) to pixels (B, C, h f, w f), unbounded (training compares them to
    images in [-1, 1]; ``AutoencoderKL.decode`` clamps nothing)."""

    def __init__(self, out_channels: int, latent_channels: int, base_channels: int,
                 channel_mult: Sequence[int], num_res_blocks: int, norm_groups: int,
                 attention: bool):
        super().__init__()
        channels = base_channels * channel_mult[-1]
        self.post_quant = nn.Conv2d(latent_channels, latent_channels, 1)
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.mid = _middle(channels, norm_groups, attention)
        layers: list[nn.Module] = []
        for level in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(channels, base_channels * channel_mult[level],
                                       norm_groups))
                channels = base_channels * channel_mult[level]
            if level > 0:
                layers.append(Upsample(channels))
        self.up = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, channels), nn.SiLU(),
                                 nn.Conv2d(channels, out_channels, 3, padding=1))

    @property
    def last_layer(self) -> torch.Tensor:
        """The last convolution's weight: LDM's adaptive adversarial weight compares the
        reconstruction and adversarial gradients there."""
        return self.out[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.mid(self.conv_in(self.post_quant(z)))))


class AutoencoderKL(nn.Module):
    """``encode(x)`` gives a :class:`DiagonalGaussian` over latents of ``latent_channels``
    channels at 1 / ``downsample_factor`` of the resolution; ``decode(z)`` gives pixels.
    ``forward(x)`` returns the reconstruction of a posterior sample and the posterior."""

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 1,
                 norm_groups: int = 32, attention: bool = True, image_size: int | None = None):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level.")
        for width in {base_channels * m for m in channel_mult}:
            if width % norm_groups:
                raise ValueError(f"every width base_channels x channel_mult must divide into "
                                 f"norm_groups={norm_groups}; {width} does not.")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {image_size} is not a multiple of the downsampling factor "
                f"{self.downsample_factor} (2 ^ (len(channel_mult) - 1)): use one level fewer "
                f"in channel_mult, or a multiple of {self.downsample_factor} as data.image_size.")
        self.image_size = image_size
        args = (latent_channels, base_channels, channel_mult, num_res_blocks, norm_groups,
                attention)
        self.encoder = Encoder(in_channels, *args)
        self.decoder = Decoder(in_channels, *args)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(c, h, w) of the latents of ``image_size`` x ``image_size`` images."""
        size = image_size // self.downsample_factor
        return (self.latent_channels, size, size)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, height, width), "
                             f"got {tuple(x.shape)}.")
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"the image's height and width must be multiples of "
                             f"{self.downsample_factor}; got {tuple(x.shape[-2:])}.")
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, as in LDM's autoencoder losses): strided convolutions to a
    map of real / fake logits, one per overlapping patch. ``layers`` stride-2 stages."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, layers: int = 3):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1),
                                    nn.LeakyReLU(0.2)]
        channels = base_channels
        for i in range(1, layers + 1):
            out = base_channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(channels, out, 4, stride, 1, bias=False),
                        nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            channels = out
        modules.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on real and fake logits."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
