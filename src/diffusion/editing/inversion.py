"""DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021): run the deterministic
DDIM update upwards, from an image to the x_T that DDIM (eta = 0) with the same steps maps back
to it, and spherical interpolation between such x_T.

Each upward step from level s to the next timestep t reuses the network's output at the
target t (as diffusers' ``DDIMInverseScheduler``): x_t = sqrt(a_t) x0_hat + sqrt(1 - a_t)
eps_hat, with eps_hat the output at (x_s, t) and x0_hat = (x_s - sqrt(1 - a_s) eps_hat) /
sqrt(a_s). Sampling takes the output at (x_t, t) for the same step, so the round trip is exact
up to how much the output changes between x_s and x_t: the error shrinks as steps grow.

The inversion follows the DDIM ODE without clipping x0_hat, so the images come back from
DDIM without clipping too (``regenerate``, ``decoder``): a sampler that clips (the runs'
default ``clip_sample``) leaves that ODE wherever the network's x0_hat strays out of [-1, 1],
as it does on MNIST's saturated background, and the round trip then gets worse with more
steps (measured in experiments/editing_mnist).

``fixed_point`` > 0 refines each step by fixed-point iteration (as in Pan et al. 2023,
"Effective Real Image Editing with Accelerated Iterative Diffusion Inversion"): the output is
taken at the current estimate of x_t instead, and x_t recomputed, that many times. A fixed
point is exactly the x_t whose DDIM step lands on x_s, so the round trip then errs only by
the iteration's residual (and by x_0 clipping in the sampler, which the inversion cannot
undo); each iteration costs one more model evaluation per step.

A run over a continuous process (a flow-matching model, EDM, the score SDEs) inverts the same
way along its probability-flow ODE in velocity form: ``flow_euler``'s steps run backwards
(``regenerate`` decodes with ``flow_euler``), t from 0 up to 1.
"""

from __future__ import annotations

import math

import torch

from diffusion.checks import check_int
from diffusion.editing.inputs import check_edit, in_batches
from diffusion.processes.base import Process
from diffusion.schedulers import DDIMScheduler
from diffusion.schedulers.velocity import VelocityScheduler


@torch.no_grad()
def invert(pipe, images: torch.Tensor, steps: int = 50,
           timestep_spacing: str | None = "trailing", y: torch.Tensor | None = None,
           fixed_point: int = 0, batch_size: int = 256) -> torch.Tensor:
    """x_T (N, C, H, W) from which DDIM without clipping (``regenerate``; same ``steps``,
    ``timestep_spacing`` and ``y``) gives back ``images``; ``fixed_point`` iterations per
    step refine it (see the module docstring)."""
    images, y = check_edit(pipe, images, steps, y, batch_size,
                           timestep_spacing=timestep_spacing)
    images = pipe.encode(images)  # a latent run inverts the images' latents
    check_int("fixed_point", fixed_point, minimum=0)
    if isinstance(pipe.scheduler, Process):
        return _invert_flow(pipe, images, steps, y, fixed_point, batch_size)
    sched = decoder(pipe, timestep_spacing)
    sched.set_timesteps(steps)
    levels = [-1, *reversed(sched.timesteps.tolist())]  # -1: the clean image (final alpha)

    def run(part: slice) -> torch.Tensor:
        x = images[part].to(pipe.device)
        labels = None if y is None else y[part].to(pipe.device)
        for s, t in zip(levels, levels[1:], strict=False):
            a_s, a_t = sched.alpha_bar(s), sched.alpha_bar(t)
            x_t = x
            for _ in range(1 + fixed_point):
                eps = sched.pred_epsilon(pipe.model_output(x_t, t, labels), t, x_t)
                x0 = (x - math.sqrt(1.0 - a_s) * eps) / math.sqrt(a_s)
                x_t = math.sqrt(a_t) * x0 + math.sqrt(1.0 - a_t) * eps
            x = x_t
        return x

    return in_batches(len(images), batch_size, run)


def _invert_flow(pipe, images: torch.Tensor, steps: int, y, fixed_point: int,
                 batch_size: int) -> torch.Tensor:
    """A continuous process's inversion: the Euler steps of ``flow_euler`` (the probability-
    flow ODE in the velocity form, ``schedulers.velocity``) run backwards, each from level s up
    to t with the velocity at the target t, x_t = x_s + (t - s) u(x_t, t): taken at x_s, then
    refined ``fixed_point`` times at the current x_t (the exact inverse of the Euler step down
    is its fixed point). The latents are x at t = 1 over the prior's std: N(0, I) noise."""
    sched = decoder(pipe)
    sched.set_timesteps(steps)
    process, times = pipe.scheduler, sched.times.tolist()[::-1]  # 0, then up to 1

    def velocity(x: torch.Tensor, t: float, labels) -> torch.Tensor:
        out = pipe.model_output(x * float(process.c_in(t)),
                                process.model_time(t).float().to(pipe.device), labels)
        x0, eps = process.pred_x0_eps(out, x, t)
        return process.velocity(x0, eps, t)

    def run(part: slice) -> torch.Tensor:
        x = images[part].to(pipe.device)
        labels = None if y is None else y[part].to(pipe.device)
        for s, t in zip(times, times[1:], strict=False):
            x_t = x
            for _ in range(1 + fixed_point):
                x_t = x + (t - s) * velocity(x_t, t, labels)
            x = x_t
        return x / process.prior_std  # in units of the prior, as sampling's starting noise

    return in_batches(len(images), batch_size, run)


def decoder(pipe, timestep_spacing: str | None = "trailing") -> DDIMScheduler | VelocityScheduler:
    """The sampler that maps an inverted x_T back to its image: DDIM, eta 0, no clipping,
    over the pipeline's noise process (``timestep_spacing`` None: the training one's); for a
    continuous process, the velocity ODE's Euler steps (``flow_euler``)."""
    if isinstance(pipe.scheduler, Process):
        return VelocityScheduler(pipe.scheduler, method="euler")
    spacing = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    return DDIMScheduler.over(pipe.scheduler, eta=0.0, clip_sample=False, **spacing)


def regenerate(pipe, x_T: torch.Tensor, steps: int = 50,
               timestep_spacing: str | None = "trailing", y: torch.Tensor | None = None,
               batch_size: int = 256) -> torch.Tensor:
    """The images ``invert`` started from, back from its x_T (same ``steps``, spacing, ``y``)."""
    return pipe(len(x_T), steps=steps, sampler=decoder(pipe, timestep_spacing), noise=x_T,
                y=y, batch_size=batch_size).images


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two tensors of one shape, one result per weight in
    [0, 1] (stacked first): the path between two Gaussian samples whose norm stays typical,
    where a straight line would pass through too-small norms (White 2016)."""
    if a.shape != b.shape:
        raise ValueError(f"the two noises must have one shape; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = (a64 @ b64 / (a64.norm() * b64.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    w = weights.double().reshape(-1, 1)
    if theta < 1e-6:  # (nearly) parallel: the straight line is the arc
        out = (1 - w) * a64 + w * b64
    else:
        out = (torch.sin((1 - w) * theta) * a64 + torch.sin(w * theta) * b64) / torch.sin(theta)
    return out.reshape(len(weights), *a.shape).to(a.dtype)


def interpolation_noises(a: torch.Tensor, b: torch.Tensor, n: int,
                         sample_shape: tuple[int, int, int]) -> torch.Tensor:
    """``n`` x_T (n, C, H, W) on the arc from ``a`` to ``b`` (each (C, H, W) or (1, C, H, W)),
    both ends included."""
    ends = []
    for key, x in (("a", a), ("b", b)):
        if not torch.is_tensor(x) or tuple(x.shape[-3:]) != tuple(sample_shape) \
                or x.numel() != math.prod(sample_shape):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{key} must be one x_T of shape {tuple(sample_shape)} (from "
                             f"pipe.invert or torch.randn); got {shape}.")
        ends.append(x.detach().float().cpu().reshape(sample_shape))
    check_int("n", n, minimum=2, note=" (both ends included)")
    return slerp(*ends, torch.linspace(0, 1, n))
