"""The sampling arguments every pipeline method shares, spelt as diffusers spells them too:
``steps`` or ``num_inference_steps``, ``generator`` or ``seed``, ``return_dict``."""

from __future__ import annotations

from typing import Any

import torch

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.sampling.checks import check_generator
from diffusion.sampling.images import PipelineOutput
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers import NoiseScheduler
from diffusion.schedulers.noise import Generators


class _Default:
    """The default of an argument whose None means something else: the pipeline's own."""

    def __repr__(self) -> str:
        return "<the pipeline's>"


DEFAULT: Any = _Default()
SamplerArg = str | SamplerSpec | NoiseScheduler | None


def resolve_steps(steps: int | None, num_inference_steps: int | None) -> int | None:
    """``steps``, or diffusers' name for it; both given and different is an error."""
    if num_inference_steps is None:
        return steps
    if steps is not None and steps != num_inference_steps:
        raise ConfigError(f"steps={steps!r} and num_inference_steps={num_inference_steps!r} "
                          "disagree: pass one of them (num_inference_steps is diffusers' name "
                          "for steps).")
    return num_inference_steps


def seeded(generator: Generators, seed: int | None, n: int) -> Generators:
    """``generator`` checked for ``n`` images, or a CPU generator seeded with ``seed``."""
    if seed is None:
        return check_generator(generator, n)
    if generator is not None:
        raise ConfigError("seed and generator were both given: pass one of them (seed=s is "
                          "generator=torch.Generator().manual_seed(s)).")
    return torch.Generator().manual_seed(check_int("seed", seed, minimum=0))


def finish(output: PipelineOutput, return_dict: bool) -> PipelineOutput | tuple:
    """The output object, or its fields as a tuple (diffusers' ``return_dict=False``)."""
    return output if return_dict else output.to_tuple()
