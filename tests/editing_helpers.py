"""An exact denoiser for Gaussian data, so the editing methods can be checked against closed
forms: with data x_0 ~ N(mu_y, s^2 I), every pixel independent, the best epsilon prediction
at x_t is E[eps | x_t] = sqrt(1 - a_t) (x_t - sqrt(a_t) mu_y) / (a_t s^2 + 1 - a_t)."""

import torch
from torch import nn

from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDPMScheduler


class GaussianDenoiser(nn.Module):
    """The exact epsilon model for x_0 ~ N(mu_y, s^2 I); ``mu_y = mu + y`` when conditional."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu: float = 0.3, s: float = 0.5,
                 num_classes: int | None = None):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.double())
        self.mu, self.s, self.num_classes = mu, s, num_classes
        self.calls: list[int] = []  # the timestep of every call

    def mean(self, y=None):
        return self.mu if y is None else self.mu + y.double().reshape(-1, 1, 1, 1)

    def alpha_bar(self, t):
        """alpha_bar at integer timesteps; at fractional ones (the samplers on a sigma table)
        through sigma interpolated linearly between training steps, as those samplers do."""
        if not t.dtype.is_floating_point:
            return self.alphas_cumprod[t]
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        low = t.double().floor().long().clamp(max=len(sigmas) - 2)
        sigma = torch.lerp(sigmas[low], sigmas[low + 1], t.double() - low)
        return 1 / (1 + sigma**2)

    def forward(self, x, t, y=None):
        self.calls.append(int(t[0]))
        a = self.alpha_bar(t).reshape(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * self.mean(y)) / (a * self.s**2 + 1 - a)
        return eps.to(x.dtype)


def gaussian_pipe(shape=(1, 16, 16), num_classes=None, mu=0.3, **scheduler) -> DiffusionPipeline:
    sched = DDPMScheduler(**{"clip_sample": False, **scheduler})
    model = GaussianDenoiser(sched.alphas_cumprod, mu=mu, num_classes=num_classes)
    return DiffusionPipeline(model, sched, shape, device="cpu", precision="fp32")
