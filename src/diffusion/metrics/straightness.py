"""How straight a model's sampling paths are (Liu et al. 2023, "Flow Straight and Fast",
definition 3.4): S = integral over t of E |(x_0 - x_1) - dx_t/dt|^2 dt along the model's own
ODE from x_1 ~ N(0, I) (diffusers' direction: t = 1 is the noise), with dx_t/dt the velocity
the network gives. S = 0 exactly when every path is a straight line run at constant speed,
which one Euler step then follows without error: what reflow aims for.

``straightness`` integrates the ODE with ``steps`` Euler steps of ``flow_euler``'s grid (t = 1
down to 0) and averages |(x_end - x_start) - u_i|^2 over the steps, each weighted by its
length, per pixel (a mean over the image's dimensions, so images of any size compare).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.checks import check_int
from diffusion.processes.base import Process
from diffusion.schedulers.velocity import VelocityScheduler

Tensor = torch.Tensor


@dataclass(frozen=True)
class Straightness:
    """S (per pixel, mean over the images), its standard error over them, n and the steps."""

    value: float
    stderr: float
    n: int
    steps: int

    def __str__(self) -> str:
        return (f"straightness {self.value:.4g} +- {self.stderr:.2g} (n={self.n}, "
                f"{self.steps} Euler steps)")


@torch.no_grad()
def straightness(velocity_fn, process: Process, noise: Tensor, steps: int = 100,
                 shift: float = 1.0) -> Straightness:
    """S of the ODE dx/dt = ``velocity_fn(x, t)`` (a float t) from ``noise`` (x at t = 1, in
    units of the prior) over ``process``; see the module docstring."""
    check_int("steps", steps, minimum=1)
    grid = VelocityScheduler(process, method="euler", shift=shift)
    grid.set_timesteps(steps)
    times = grid.times.tolist()
    x = noise.double() * process.prior_std
    start, velocities, lengths = x, [], []
    for t, t_next in zip(times, times[1:], strict=False):
        u = velocity_fn(x, t).double()
        velocities.append(u)
        lengths.append(t - t_next)
        x = x + (t_next - t) * u
    # dx/dt along the path; the straight line's is (x_0 - x_1) / (0 - 1) = x_1 - x_0
    chord = start - x
    per_image = sum(length * (chord - u).pow(2).flatten(1).mean(1)
                    for length, u in zip(lengths, velocities, strict=True)) / sum(lengths)
    n = len(per_image)
    stderr = float(per_image.std() / n**0.5) if n > 1 else float("nan")
    return Straightness(float(per_image.mean()), stderr, n, steps)


def pipeline_velocity(pipe, y: Tensor | None = None):
    """``velocity_fn`` of a ``DiffusionPipeline`` over a continuous process: the network's
    output at (c_in(t) x, model_time(t)) read as the velocity alpha' x_0 + sigma' eps."""
    process = pipe.scheduler

    def velocity(x: Tensor, t: float) -> Tensor:
        xin = (x * float(process.c_in(t))).to(pipe.device, torch.float32)
        out = pipe.model_output(xin, process.model_time(t).float().to(pipe.device), y)
        x0, eps = process.pred_x0_eps(out.double(), x.to(pipe.device), t)
        return process.velocity(x0, eps, t)
    return velocity
