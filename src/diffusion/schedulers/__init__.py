"""Noise schedulers: the forward process q(x_t | x_0) and a reverse step, diffusers-shaped.

>>> sched = DDPMScheduler(beta_schedule="cosine")
>>> x_t = sched.add_noise(x0, noise, t)                    # training input
>>> loss = mse(model(x_t, t), sched.training_target(x0, noise, t))
>>> sched.set_timesteps(50)
>>> for t in sched.timesteps:
...     x = sched.step(model(x, t.expand(len(x))), t, x).prev_sample
"""

from diffusion.schedulers.base import NoiseScheduler, SchedulerOutput
from diffusion.schedulers.ddim import DDIMScheduler
from diffusion.schedulers.ddpm import DDPMScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "NoiseScheduler", "SchedulerOutput"]
