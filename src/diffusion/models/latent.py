"""The latent space of latent diffusion (Rombach et al. 2022): a trained KL autoencoder and
the factor that scales its latents to unit variance.

A latent run's network denoises ``z = scale * E(x)``; ``LatentSpace`` maps images to those
latents (``encode``: the posterior's mean, or a sample) and back (``decode``: the decoder of
``z / scale``, clamped to [-1, 1]). The pipeline decodes wherever images leave it, so grids,
``diffusion.sample``, FID and the edits see pixels for latent and pixel runs alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LatentSpace:
    """``autoencoder`` (an ``AutoencoderKL``, frozen, in eval mode) and ``scale``.

    ``image_shape`` is the shape of the images it encodes, (C, H, W); ``shape`` that of their
    latents (c, H / f, W / f). ``batch_size`` bounds how many images pass the autoencoder at
    once (its activations at full resolution are the memory that counts)."""

    def __init__(self, autoencoder: nn.Module, scale: float, image_size: int,
                 batch_size: int = 64):
        if not scale > 0:
            raise ValueError(f"the latent scale must be positive; got {scale}.")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = float(scale)
        self.image_shape = (int(autoencoder.in_channels), int(image_size), int(image_size))
        self.shape = tuple(autoencoder.latent_shape(int(image_size)))
        self.factor = int(autoencoder.downsample_factor)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def to(self, device: str | torch.device) -> LatentSpace:
        self.autoencoder.to(device)
        return self

    def __repr__(self) -> str:
        return (f"LatentSpace({self.image_shape} -> {self.shape}, f={self.factor}, "
                f"scale={self.scale:.4g})")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> scaled latents (N, c, h, w) on the images'
        device: the posterior's mean (``sample``: a draw from it with ``generator``)."""
        parts = []
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device, torch.float32)
            posterior = self.autoencoder.encode(x)
            z = posterior.sample(generator) if sample else posterior.mean
            parts.append(z.to(images.device) * self.scale)
        return torch.cat(parts) if parts else images.new_zeros((0, *self.shape))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, c, h, w) -> float32 images (N, C, H, W) in [-1, 1] on ``z``'s
        device."""
        parts = []
        for i in range(0, len(z), self.batch_size):
            part = z[i:i + self.batch_size].to(self.device, torch.float32) / self.scale
            parts.append(self.autoencoder.decode(part).clamp(-1.0, 1.0).to(z.device))
        return torch.cat(parts) if parts else z.new_zeros((0, *self.image_shape))

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (N, 1 or C, H, W; 1: fill in) at the latents' resolution, (N, 1, h, w):
        a latent cell is filled in where any of its pixels is (max pooling), so every pixel to
        fill is regenerated; the pixels kept are pasted back after decoding."""
        m = mask.float().amax(dim=1, keepdim=True)
        return F.max_pool2d(m, self.factor) if self.factor > 1 else m
