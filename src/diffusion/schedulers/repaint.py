"""RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models"): DDIM/DDPM steps for the unknown pixels, the noised original for the known ones,
and resampling jumps that push the harmonised image back up the chain and denoise it again.

The API is diffusers' ``RePaintScheduler``: ``set_timesteps(n, jump_length, jump_n_sample)``
builds a timestep list that goes down and, every ``jump_length`` steps, back up
``jump_length`` steps, ``jump_n_sample - 1`` times; a sampling loop calls ``step`` where the
list goes down and ``undo_step`` where it goes up. ``jump_n_sample=1`` has no jumps: the plain
"replace the known pixels" inpainting. ``mask`` is 1 where a pixel is known (kept) and 0
where it is filled in, as in diffusers.

Agreement with diffusers (same betas, ``leading`` spacing, epsilon prediction): the same
timestep list and, from the same inputs and generator, the same ``step``. ``undo_step`` moves
x from the level the step below ``timestep`` lands on back to ``timestep`` with one draw,
x_t = sqrt(a_t / a_prev) x_prev + sqrt(1 - a_t / a_prev) z, the exact forward marginal.
diffusers instead applies the ``T // n`` single-step betas ``beta[t] .. beta[t + T//n - 1]``
with one draw each, which lands on that level only when ``n = T`` (then both agree to
rounding); for n < T its product of alphas misses a_t / a_prev by the betas it skips.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.checks import check_int
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.ddim import DDIMScheduler


def repaint_indices(n: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """Indices 0..n-1 into the ascending step grid, in RePaint's visiting order: down from
    n - 1 to 0, and after index j (a multiple of ``jump_length`` below n - jump_length) back up
    ``jump_length`` indices, ``jump_n_sample - 1`` times (diffusers' ``set_timesteps``)."""
    jumps = {j: jump_n_sample - 1 for j in range(0, n - jump_length, jump_length)}
    order, t = [], n
    while t >= 1:
        t -= 1
        order.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                order.append(t)
    return order


class RePaintScheduler(DDIMScheduler):
    """RePaint's reverse step and jumps; arguments as in diffusers (``eta`` 0: DDIM for the
    unknown pixels, 1: DDPM). Not a ``sampler=`` choice: its step needs the original image
    and the mask. ``timestep_spacing`` defaults to diffusers' RePaint (``leading``)."""

    def __init__(self, **options: Any):
        """``options``: DDIM's (``eta``, the noise process); the last step lands on the clean
        image, as in diffusers, so that the known pixels come out as the original."""
        if options.get("set_alpha_to_one", True) is not True:
            raise ValueError("RePaintScheduler needs set_alpha_to_one=True: its last step must "
                             "land on the clean image for the known pixels to be the original.")
        super().__init__(**options)
        self.jump_length, self.jump_n_sample = 10, 10

    @property
    def stochastic(self) -> bool:
        return True  # the known pixels are noised at every step

    def set_timesteps(self, num_inference_steps: int, jump_length: int = 10,
                      jump_n_sample: int = 10, device: str | torch.device | None = None):
        """The ``num_inference_steps`` grid of ``timestep_spacing``, visited with jumps (see the
        module docstring); ``timesteps`` then holds every visit, ``previous_timestep`` the
        grid's next lower entry."""
        super().set_timesteps(num_inference_steps, device=device)
        self.jump_length = check_int("jump_length", jump_length)
        self.jump_n_sample = check_int("jump_n_sample", jump_n_sample)
        grid = sorted(self.timesteps.tolist())
        order = repaint_indices(len(grid), jump_length, jump_n_sample)
        self.timesteps = torch.tensor([grid[i] for i in order], dtype=torch.long, device=device)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
             sample: torch.Tensor, original_image: torch.Tensor, mask: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """From x_t = ``sample`` to the next lower grid timestep: the DDIM step (``eta``) where
        ``mask`` is 0, ``original_image`` noised to that level where it is 1. One noise draw
        serves both, as in diffusers; at the last step the known pixels are the original."""
        t, prev = self._step_pair(timestep)
        a_prev = self.alpha_bar(prev)
        x0 = self._clip(self.pred_original_sample(model_output, t, sample))
        eps = self.pred_epsilon(model_output, t, sample)
        noise = self._randn(model_output, generator)
        sigma = self.eta * math.sqrt(self.posterior_variance(t))
        unknown = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if t > 0 and self.eta > 0:
            unknown = unknown + sigma * noise
        known = math.sqrt(a_prev) * original_image + math.sqrt(1.0 - a_prev) * noise
        prev_sample = mask * known + (1.0 - mask) * unknown
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        return out if return_dict else tuple(out)

    def undo_step(self, sample: torch.Tensor, timestep: int | torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """x at ``timestep`` from ``sample``, the x that the step at ``timestep`` produced
        (one level lower): the forward process over that one step of the grid."""
        t, prev = self._step_pair(timestep)
        ratio = self.alpha_bar(t) / self.alpha_bar(prev)
        return math.sqrt(ratio) * sample + math.sqrt(1.0 - ratio) * self._randn(sample, generator)
