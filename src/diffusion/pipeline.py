"""``from diffusion.pipeline import DiffusionPipeline``: the pipeline lives in
``diffusion.sampling``; this name keeps working."""
from diffusion.sampling.pipeline import DiffusionPipeline, PipelineOutput, make_sampler

__all__ = ["DiffusionPipeline", "PipelineOutput", "make_sampler"]
