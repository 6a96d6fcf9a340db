"""``from diffusion.pipeline import DiffusionPipeline``: the pipeline lives in
``diffusion.sampling``; this name keeps working, with the pipeline's output and saving."""
from diffusion.sampling.pipeline import (
    DiffusionPipeline,
    PipelineOutput,
    make_sampler,
    save_images,
)
from diffusion.sampling.sampler import SamplerSpec

__all__ = ["DiffusionPipeline", "PipelineOutput", "SamplerSpec", "make_sampler", "save_images"]
