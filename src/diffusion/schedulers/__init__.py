"""Noise schedulers: the forward process q(x_t | x_0) and a reverse step, diffusers-shaped.

Samplers by name (``NoiseScheduler.SAMPLERS``): ``ddpm``, ``ddim``, ``dpmpp_2m``,
``dpmpp_3m``, ``dpmpp_2m_sde`` (DPM-Solver++ of order 2 or 3, ODE or SDE), ``euler``,
``euler_a`` (Euler ancestral) and ``heun``. ``RePaintScheduler`` inpaints (its step takes
the original image and a mask), so it is not among them. The continuous-time samplers
(``CONTINUOUS_SAMPLERS``: ``pc``, ``em``, ``ode``, ``rk45``, ``ald``, EDM's ``edm``,
``edm_euler``, ``edm_euler_a``, ``edm_dpmpp_2m``, and flow matching's ``flow_euler``,
``flow_heun``, ``flow_midpoint``) walk a ``diffusion.processes``
process, a DDPM table's included (``schedulers.continuous``).

>>> sched = DDPMScheduler(beta_schedule="cosine")
>>> x_t = sched.add_noise(x0, noise, t)                    # training input
>>> loss = mse(model(x_t, t), sched.training_target(x0, noise, t))
>>> sampler = EulerDiscreteScheduler.over(sched)          # same noise process, other steps
>>> sampler.set_timesteps(50)
>>> x = torch.randn(shape) * sampler.init_noise_sigma
>>> for t in sampler.timesteps:
...     out = model(sampler.scale_model_input(x, t), t.expand(len(x)))
...     x = sampler.step(out, t, x).prev_sample
"""

from diffusion.schedulers.adaptive_ode import AdaptiveODESampler
from diffusion.schedulers.annealed_langevin import AnnealedLangevinScheduler
from diffusion.schedulers.base import NoiseScheduler, SchedulerOutput
from diffusion.schedulers.continuous import CONTINUOUS_PRESETS, CONTINUOUS_SAMPLERS
from diffusion.schedulers.ddim import DDIMScheduler
from diffusion.schedulers.ddpm import DDPMScheduler
from diffusion.schedulers.dpm_solver import DPMSolverMultistepScheduler
from diffusion.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusion.schedulers.heun import HeunDiscreteScheduler
from diffusion.schedulers.karras import KarrasScheduler
from diffusion.schedulers.repaint import RePaintScheduler
from diffusion.schedulers.score_sde import ScoreSDEScheduler
from diffusion.schedulers.velocity import VelocityScheduler

__all__ = ["CONTINUOUS_PRESETS", "CONTINUOUS_SAMPLERS", "AdaptiveODESampler",
           "AnnealedLangevinScheduler",
           "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
           "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
           "KarrasScheduler",
           "NoiseScheduler", "RePaintScheduler", "SchedulerOutput",
           "ScoreSDEScheduler", "VelocityScheduler"]
