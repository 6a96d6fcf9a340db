"""Denoising backbones, all called as `model(x, t, y=None)` and returning x's shape.

`MODELS` maps the config names (`model=basic|unet|unet_attn|diffusers_unet`) to the classes;
`DiffusersUNet` is diffusers' UNet2DModel behind the same interface (needs diffusers).
"""

from diffusion.models.basic import BasicUNet
from diffusion.models.diffusers_unet import DiffusersUNet
from diffusion.models.unet import UNet
from diffusion.models.unet_attn import AttentionUNet

MODELS = {"basic": BasicUNet, "unet": UNet, "unet_attn": AttentionUNet,
          "diffusers_unet": DiffusersUNet}

__all__ = ["MODELS", "AttentionUNet", "BasicUNet", "DiffusersUNet", "UNet"]
