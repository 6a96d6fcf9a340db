"""Image-to-image (SDEdit, Meng et al. 2022): noise the images to the timestep that
``strength`` selects, then run the reverse process from there.

As in diffusers' img2img pipelines, ``strength`` picks how much of the ``steps`` schedule runs:
the last round(down) ``strength * steps`` of its timesteps. ``strength=0`` runs none and returns
the images; ``strength=1`` runs them all and starts from the noise alone, which is plain
sampling from that noise (diffusers would keep sqrt(alpha_bar(T-1)) of the image, ~0.006 on
the linear schedule).
"""

from __future__ import annotations

import torch

from diffusion.editing.inputs import check_edit, in_batches
from diffusion.schedulers import DDIMScheduler, DDPMScheduler, NoiseScheduler

#: samplers whose state is x_t itself and whose step is keyed by the timestep alone, so that
#: they can start anywhere in their schedule
RESTARTABLE = (DDIMScheduler, DDPMScheduler)


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, int | float) \
            or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1] (0: the input, 1: a new "
                         f"sample); got {strength!r}.")
    return float(strength)


def restartable(sched: NoiseScheduler, task: str) -> NoiseScheduler:
    """``sched`` if it can start in the middle of its schedule, else the one-sentence error."""
    if not isinstance(sched, RESTARTABLE):
        raise ValueError(f"{task} runs with sampler=ddim or sampler=ddpm, which can start from "
                         f"any timestep; got {type(sched).__name__}.")
    return sched


def start_index(strength: float, steps: int) -> int:
    """The first of the ``steps`` timesteps that img2img runs (``steps`` runs none)."""
    return steps - min(int(steps * strength), steps)


def denoise(pipe, sched: NoiseScheduler, x: torch.Tensor, timesteps: list[int], y,
            generator: torch.Generator | None) -> torch.Tensor:
    """The reverse process over ``timesteps`` (a tail of ``sched.timesteps``) from x."""
    for t in timesteps:
        out = pipe.model_output(sched.scale_model_input(x, t), t, y)
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


@torch.no_grad()
def img2img(pipe, images: torch.Tensor, strength: float = 0.6, steps: int = 50,
            sampler: str | NoiseScheduler = "ddim", eta: float = 0.0,
            timestep_spacing: str | None = "trailing", generator: torch.Generator | None = None,
            noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """``images`` (N, C, H, W) in [-1, 1] edited by SDEdit; see the module docstring.

    ``noise`` (default: drawn from ``generator``, whole, so the result does not depend on
    ``batch_size``) is the noise added to the images; ``y`` labels for a conditional model.
    """
    strength = check_strength(strength)
    images, y = check_edit(pipe, images, steps, y, batch_size, sampler, eta, timestep_spacing)
    sched = restartable(pipe._sampler(sampler, steps, eta, timestep_spacing), "img2img")
    if noise is None:
        noise = torch.randn(images.shape, generator=generator,
                            device=generator.device if generator is not None else "cpu")
    elif noise.shape != images.shape:
        raise ValueError(f"noise must have the images' shape {tuple(images.shape)}; "
                         f"got {tuple(noise.shape)}.")
    first = start_index(strength, steps)
    timesteps = sched.timesteps.tolist()[first:]
    if not timesteps:
        return images

    def run(part: slice) -> torch.Tensor:
        x0, z = images[part].to(pipe.device), noise[part].to(pipe.device)
        x = z * sched.init_noise_sigma if first == 0 else sched.add_noise(x0, z, timesteps[0])
        return denoise(pipe, sched, x, timesteps, None if y is None else y[part].to(pipe.device),
                       generator)

    return in_batches(len(images), batch_size, run)
