"""Inpainting with RePaint (Lugmayr et al. 2022): at every step the known pixels are the
original noised to that step's level and the unknown ones the model's step, and resampling
jumps (``jump_length``, ``jump_n_sample``) noise the result back up and denoise it again so
that the two parts agree. ``jump_n_sample=1`` makes no jumps: the plain "replace the known
pixels" inpainting, one model evaluation per step.

The mask is 1 where a pixel is filled in (white in a PNG), 0 where it is kept; the known
pixels come out as the original at the last step (their noise level is then zero). A latent
run inpaints its latents: a latent cell is regenerated where any of its pixels is to be filled
in, and after decoding the kept pixels are the original's.
"""

from __future__ import annotations

import torch

from diffusion.editing.inputs import (
    check_edit,
    check_images,
    check_mask,
    in_batches,
    starting_noise,
)
from diffusion.errors import ConfigError
from diffusion.processes.base import Process
from diffusion.sampling.checks import (
    check_generator,
    check_labels,
    check_sampling,
    generator_part,
)
from diffusion.sampling.sampler import make_sampler
from diffusion.schedulers import RePaintScheduler
from diffusion.schedulers.noise import Generators, randn_tensor
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
            batch_size: int = 256, sampler=None) -> torch.Tensor:
    """``images`` (N, C, H, W) in [-1, 1] with the pixels where ``mask`` is 1 filled in.

    ``steps`` reverse steps (diffusers' RePaint default 250), ``eta`` 0 (DDIM) to 1 (DDPM)
    for the unknown pixels; ``noise`` is x_T (default: drawn whole from ``generator``); the
    per-step noise comes from ``generator`` (a list: one per image). Model evaluations:
    ``repaint_nfe``. A run over a continuous process inpaints with ``inpaint_continuous``
    instead (``sampler``; the jumps, eta and spacing are RePaint's and do not apply). Images
    and masks as ``check_images`` and ``check_mask`` take them
    (PIL, numpy, tensors); a tensor comes out.
    """
    if isinstance(pipe.scheduler, Process):  # ``sampler``: see inpaint_continuous
        return inpaint_continuous(pipe, images, mask, steps, sampler=sampler,
                                  generator=generator, noise=noise, y=y, batch_size=batch_size)
    if sampler is not None:
        raise ConfigError("inpainting a DDPM run runs RePaint, whose steps are set by eta: "
                          "sampler= is for runs over a continuous process.")
    pixels, y = check_edit(pipe, images, steps, y, batch_size, eta=eta,
                           timestep_spacing=timestep_spacing)
    generator = check_generator(generator, len(pixels))
    images, keep, mask = in_model_space(pipe, pixels, mask)
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

    return from_model_space(pipe, in_batches(len(images), batch_size, run), pixels, mask)


@torch.no_grad()
def inpaint_continuous(pipe, images: torch.Tensor, mask: torch.Tensor, steps: int = 100,
                       sampler=None, generator: Generators = None,
                       noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
                       batch_size: int = 256) -> torch.Tensor:
    """Inpainting for a run over a continuous process (score SDEs, EDM, flow matching): the
    replacement method of Song et al. 2021 (appendix I.2). Before each step the known pixels
    are set to the original noised to that state's level with fresh noise
    (``known_state``), the unknown ones follow the sampler (``sampler``: a continuous
    sampler's name or object; None: the pipeline's, ``pipe.sampler``); the known pixels end
    as the original. No resampling jumps: RePaint's are for the discrete DDPM chain."""
    pixels = check_images(images, pipe.image_shape)
    generator = check_generator(generator, len(pixels))
    images, keep, mask = in_model_space(pipe, pixels, mask)
    spec = pipe.sampler if sampler is None else sampler
    sched = spec.build(pipe.scheduler) if hasattr(spec, "build") else (
        make_sampler(pipe.scheduler, spec) if isinstance(spec, str) else spec)
    if not hasattr(sched, "known_state"):
        raise ConfigError(f"{type(sched).__name__} cannot inpaint a continuous run: it has no "
                          "chain of states to put the known pixels in; use pc, em, ode, ald, "
                          "edm* or flow_*.")
    check_sampling(sched, steps, 0.0, pipe.scheduler.num_train_timesteps, n=len(images),
                   batch_size=batch_size)
    y = check_labels(y, len(images), pipe.num_classes)
    noise = starting_noise(noise, images.shape, generator)

    def run(part: slice) -> torch.Tensor:
        original, known = images[part].to(pipe.device), keep[part].to(pipe.device)
        g = generator_part(generator, part)
        labels = None if y is None else y[part].to(pipe.device)
        sched.set_timesteps(steps, device=pipe.device)
        positions = {j: k for k, j in enumerate(sched.state_positions)}
        x = noise[part].to(pipe.device) * sched.init_noise_sigma
        for j, t in enumerate(sched.timesteps):
            if j in positions:
                fresh = randn_tensor(x.shape, g, x.device, x.dtype)
                x = known * sched.known_state(original, fresh, positions[j]) + (1 - known) * x
            out = pipe.model_output(sched.scale_model_input(x, t), t, labels)
            x = sched.step(out, t, x, generator=g).prev_sample
        return known * original + (1 - known) * x

    return from_model_space(pipe, in_batches(len(images), batch_size, run), pixels, mask)


def in_model_space(pipe, images: torch.Tensor, mask) -> tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
    """(what the model denoises, where it is kept, the pixel mask) for ``images`` and
    ``mask`` (checked by ``check_mask``): the images themselves, or a latent run's latents
    with the mask at their resolution (``LatentSpace.mask``)."""
    fill = check_mask(mask, images)
    latent = getattr(pipe, "latent", None)
    if latent is None:
        return images, 1.0 - fill, fill
    return pipe.encode(images), 1.0 - latent.mask(fill), fill


def from_model_space(pipe, x: torch.Tensor, images: torch.Tensor,
                     fill: torch.Tensor) -> torch.Tensor:
    """The inpainted images from the model's result ``x``: a latent run's decoded, with the
    kept pixels pasted back from ``images`` (the decoder reproduces them only roughly)."""
    if getattr(pipe, "latent", None) is None:
        return x
    return fill * pipe.decode(x) + (1.0 - fill) * images
