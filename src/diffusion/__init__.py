"""diffusion: a PyTorch research framework for denoising diffusion models."""

__version__ = "0.1.0"
