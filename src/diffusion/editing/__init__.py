"""Editing with a trained model: image-to-image (SDEdit), inpainting (RePaint), DDIM
inversion and interpolation between noises. Each function takes a ``DiffusionPipeline`` and
asks its network only through ``pipe.model_output``; the pipeline's ``img2img``, ``inpaint``,
``invert``, ``regenerate`` and ``interpolate`` methods call them.
"""

from diffusion.editing.img2img import img2img
from diffusion.editing.inpaint import inpaint, repaint_nfe
from diffusion.editing.inputs import check_discrete, check_images, check_mask
from diffusion.editing.inversion import decoder, interpolation_noises, invert, regenerate, slerp
from diffusion.editing.masks import MASKS, load_mask, make_mask, mask_option

__all__ = ["MASKS", "check_discrete", "check_images", "check_mask", "decoder", "img2img", "inpaint",
           "interpolation_noises", "invert", "load_mask", "make_mask", "mask_option",
           "regenerate", "repaint_nfe", "slerp"]
