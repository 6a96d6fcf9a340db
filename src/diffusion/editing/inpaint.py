"""Inpainting with RePaint (Lugmayr et al. 2022): at every step the known pixels are the
original noised to that step's level and the unknown ones the model's step, and resampling
jumps (``jump_length``, ``jump_n_sample``) noise the result back up and denoise it again so
that the two parts agree. ``jump_n_sample=1`` makes no jumps: the plain "replace the known
pixels" inpainting, one model evaluation per step.

The mask is 1 where a pixel is filled in (white in a PNG), 0 where it is kept; the known
pixels come out as the original at the last step (their noise level is then zero).
"""

from __future__ import annotations

import torch

from diffusion.editing.inputs import check_edit, check_mask, in_batches, starting_noise
from diffusion.sampling.checks import check_generator, generator_part
from diffusion.schedulers import RePaintScheduler
from diffusion.schedulers.noise import Generators
from diffusion.schedulers.repaint import repaint_indices


def repaint_nfe(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Model evaluations of one RePaint run: the downward moves of its timestep list."""
    order = repaint_indices(steps, jump_length, jump_n_sample)
    return 1 + sum(b < a for a, b in zip(order, order[1:], strict=False))


def repaint_sampler(pipe, steps: int, jump_length: int, jump_n_sample: int, eta: float,
                    timestep_spacing: str | None) -> RePaintScheduler:
    """The RePaint scheduler over the pipeline's noise process, its timesteps set."""
    options = {"eta": eta, "set_alpha_to_one": True}  # whatever the training DDIM's
    if timestep_spacing is not None:
        options["timestep_spacing"] = timestep_spacing
    sched = RePaintScheduler.over(pipe.scheduler, **options)
    sched.set_timesteps(steps, jump_length, jump_n_sample, device=pipe.device)
    return sched


@torch.no_grad()
def inpaint(pipe, images: torch.Tensor, mask: torch.Tensor, steps: int = 250,
            jump_length: int = 10, jump_n_sample: int = 10, eta: float = 0.0,
            timestep_spacing: str | None = "trailing", generator: Generators = None,
            noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """``images`` (N, C, H, W) in [-1, 1] with the pixels where ``mask`` is 1 filled in.

    ``steps`` reverse steps (diffusers' RePaint default 250), ``eta`` 0 (DDIM) to 1 (DDPM)
    for the unknown pixels; ``noise`` is x_T (default: drawn whole from ``generator``); the
    per-step noise comes from ``generator`` (a list: one per image). Model evaluations:
    ``repaint_nfe``. Images and masks as ``check_images`` and ``check_mask`` take them
    (PIL, numpy, tensors); a tensor comes out.
    """
    images, y = check_edit(pipe, images, steps, y, batch_size, eta=eta,
                           timestep_spacing=timestep_spacing)
    generator = check_generator(generator, len(images))
    keep = 1.0 - check_mask(mask, images)
    sched = repaint_sampler(pipe, steps, jump_length, jump_n_sample, eta, timestep_spacing)
    noise = starting_noise(noise, images.shape, generator)
    timesteps = sched.timesteps.tolist()

    def run(part: slice) -> torch.Tensor:
        original, known = images[part].to(pipe.device), keep[part].to(pipe.device)
        x = noise[part].to(pipe.device) * sched.init_noise_sigma
        labels = None if y is None else y[part].to(pipe.device)
        g = generator_part(generator, part)
        t_last = timesteps[0] + 1
        for t in timesteps:
            if t < t_last:
                out = pipe.model_output(sched.scale_model_input(x, t), t, labels)
                x = sched.step(out, t, x, original, known, generator=g).prev_sample
            else:
                x = sched.undo_step(x, t_last, generator=g)
            t_last = t
        return x

    return in_batches(len(images), batch_size, run)
