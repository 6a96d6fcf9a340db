"""Image-to-image (SDEdit, Meng et al. 2022): noise the images to the timestep that
``strength`` selects, then run the reverse process from there.

As in diffusers' img2img pipelines, ``strength`` picks how much of the ``steps`` schedule runs:
the last round(down) ``strength * steps`` of its steps, with any sampler: DDIM and DDPM start
from the image noised to that step's timestep, the samplers on a sigma table (Euler, Heun,
DPM-Solver) from it noised to that step's sigma, in their own variables, and begin their run
at that step (``set_begin_index``, as diffusers). ``strength=0`` runs none and returns
the images; ``strength=1`` runs them all and starts from the noise alone, which is plain
sampling from that noise (diffusers would keep sqrt(alpha_bar(T-1)) of the image, ~0.006 on
the linear schedule).
"""

from __future__ import annotations

import math

import torch

from diffusion.checks import check_number
from diffusion.editing.inputs import check_edit, in_batches, starting_noise
from diffusion.sampling.checks import check_generator, generator_part
from diffusion.schedulers import NoiseScheduler
from diffusion.schedulers.noise import Generators
from diffusion.schedulers.sigmas import SigmaScheduler


def check_strength(strength) -> float:
    return check_number("strength", strength, 0, 1, note=" (0: the input, 1: a new sample)")


def start_index(strength: float, steps: int) -> int:
    """The first of the ``steps`` steps that img2img runs (``steps`` runs none)."""
    return steps - min(int(steps * strength), steps)


def begin(sched: NoiseScheduler, first: int, x0: torch.Tensor, noise: torch.Tensor):
    """(the sampler's state at the start of step ``first``, the timesteps of the calls left):
    x0 noised to that step's level, in the sampler's own variables. ``first = 0`` starts from
    the noise alone, as plain sampling does."""
    sched.set_timesteps(sched.num_inference_steps, device=x0.device)
    position = sched.state_positions[first]  # a second-order sampler makes two calls a step
    timesteps = sched.timesteps[position:]
    if first == 0:
        return noise * sched.init_noise_sigma, timesteps
    if not isinstance(sched, SigmaScheduler):  # the state is x_t at an integer timestep
        return sched.add_noise(x0, noise, int(timesteps[0])), timesteps
    sched.set_begin_index(position)
    sigma = float(sched.sigmas[position])
    x_t = (x0 + sigma * noise) / math.sqrt(1.0 + sigma**2)  # the level of sigma, x_t as trained
    # the state whose network input (scale_model_input) is that x_t
    to_state = 1.0 / float(sched.scale_model_input(torch.ones(()), timesteps[0]))
    return x_t * to_state, timesteps


def denoise(pipe, sched: NoiseScheduler, x: torch.Tensor, timesteps, y,
            generator: Generators) -> torch.Tensor:
    """The reverse process over ``timesteps`` (a tail of ``sched.timesteps``) from x."""
    for t in timesteps:
        out = pipe.model_output(sched.scale_model_input(x, t), t, y)
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


@torch.no_grad()
def img2img(pipe, images: torch.Tensor, strength: float = 0.6, steps: int = 50,
            sampler: str | NoiseScheduler = "ddim", eta: float = 0.0,
            timestep_spacing: str | None = "trailing", generator: Generators = None,
            noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """``images`` (N, C, H, W) in [-1, 1] edited by SDEdit; see the module docstring. Any
    image kind ``check_images`` takes (PIL, numpy) goes in; a tensor comes out.

    ``noise`` (default: drawn from ``generator``, whole, so the result does not depend on
    ``batch_size``) is the noise added to the images; ``generator`` a list: one per image;
    ``y`` labels for a conditional model. A latent run (``pipe.latent``) edits the images'
    latents (``noise`` then has their shape) and decodes the result.
    """
    strength = check_strength(strength)
    images, y = check_edit(pipe, images, steps, y, batch_size, sampler, eta, timestep_spacing)
    generator = check_generator(generator, len(images))
    sched = pipe._sampler(sampler, steps, eta, timestep_spacing)
    first = start_index(strength, steps)
    if first == steps:
        return images
    x0 = pipe.encode(images)
    noise = starting_noise(noise, x0.shape, generator)

    def run(part: slice) -> torch.Tensor:
        x, timesteps = begin(sched, first, x0[part].to(pipe.device),
                             noise[part].to(pipe.device))
        return denoise(pipe, sched, x, timesteps,
                       None if y is None else y[part].to(pipe.device),
                       generator_part(generator, part))

    return pipe.decode(in_batches(len(images), batch_size, run))
