"""Denoising backbones, all called as `model(x, t, y=None)` and returning x's shape.

`MODELS` maps the config names (`model=basic|unet|unet_attn`) to the classes.
"""

from diffusion.models.basic import BasicUNet
from diffusion.models.unet import UNet
from diffusion.models.unet_attn import AttentionUNet

MODELS = {"basic": BasicUNet, "unet": UNet, "unet_attn": AttentionUNet}

__all__ = ["MODELS", "AttentionUNet", "BasicUNet", "UNet"]
