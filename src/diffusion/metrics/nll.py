"""Negative log-likelihood of test images in bits per dimension, for any trained model: through
the probability-flow ODE (``metrics.likelihood``; every process, a DDPM table read in
continuous time) and, for a DDPM run, the discrete variational bound (``metrics.vlb``).

The ODE figure is log p of uniformly dequantised 8-bit images (x = 2 (k + u) / 256 - 1), an
upper bound on the discrete NLL as in Song et al. 2021 and Ho et al. 2020's comparisons; the
variational bound is of the 8-bit images themselves (discretised decoder). A class-conditional
model is scored on each image's own label: log p(x | y).

>>> result = score_nll(model, scheduler, images_uint8, batch_size=250, seed=0)
>>> print(result)
NLL 1.23 bits/dim (ODE, Hutchinson; +- 0.01, n=1000, 198 NFE); VLB 1.45 bits/dim
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from diffusion.checks import check_choice, check_int, check_number
from diffusion.metrics.likelihood import bits_per_dim, dequantize, ode_likelihood
from diffusion.metrics.vlb import ddpm_vlb
from diffusion.processes.base import Process
from diffusion.schedulers.continuous import as_process

Tensor = torch.Tensor
TRACES = ("hutchinson", "exact")


@dataclass
class NllResult:
    """Mean bits/dim over ``n`` images and its standard error, by the ODE (``trace``:
    Hutchinson's estimator or the exact divergence), with the mean model evaluations per
    batch, and the discrete variational bound where the run has one (None otherwise)."""

    bits_per_dim: float
    stderr: float
    n: int
    trace: str
    nfe: float
    vlb_bits_per_dim: float | None = None
    vlb_stderr: float | None = None

    def __str__(self) -> str:
        vlb = ("" if self.vlb_bits_per_dim is None else
               f"; VLB {self.vlb_bits_per_dim:.3f} bits/dim (+- {self.vlb_stderr:.3f})")
        return (f"NLL {self.bits_per_dim:.3f} bits/dim (ODE, {self.trace}; +- "
                f"{self.stderr:.3f}, n={self.n}, {self.nfe:.0f} NFE){vlb}")

    def to_dict(self) -> dict:
        return asdict(self)


def eps_function(model: nn.Module, process: Process, y: Tensor | None = None):
    """(x_t, t) -> the epsilon the network implies at x_t, differentiable in x_t: the network
    sees c_in(t) x_t at ``model_time(t)``, as in training."""
    def eps_fn(x: Tensor, t: float) -> Tensor:
        x_in = (x * float(process.c_in(t))).float()
        t_in = process.model_time(t).float().to(x.device).expand(x.shape[0])
        output = model(x_in, t_in, y).double()
        return process.pred_x0_eps(output, x, t)[1]
    return eps_fn


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    values = values.double()
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), stderr


def score_nll(model: nn.Module, scheduler, images: Tensor, *, labels: Tensor | None = None,
              batch_size: int = 250, trace: str = "hutchinson", rtol: float = 1e-5,
              atol: float = 1e-5, vlb: bool = True, seed: int = 0,
              device: str | torch.device = "cpu", progress=None) -> NllResult:
    """Bits/dim of uint8 ``images`` (N, C, H, W) under ``model`` trained on ``scheduler`` (a
    ``Process`` or a DDPM scheduler). ``vlb``: also the variational bound, for a DDPM
    scheduler (a continuous process has none here). ``seed`` fixes the dequantisation, the
    Hutchinson probes and the bound's draws. ``progress(done, total)`` is called per batch."""
    check_choice("trace", trace, TRACES)
    check_int("batch_size", batch_size)
    check_number("rtol", rtol, above=0)
    check_number("atol", atol, above=0)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W); got {images.dtype} "
                         f"{tuple(images.shape)}.")
    process = as_process(scheduler)
    with_vlb = vlb and not isinstance(scheduler, Process)
    generator = torch.Generator().manual_seed(seed)
    dim = images[0].numel()
    bpd, vlb_bpd, nfe = [], [], []
    model.eval()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(torch.float32).div(127.5).sub(1.0)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        eps_fn = eps_function(model, process, y)
        result = ode_likelihood(process, eps_fn, dequantize(x, generator).to(device),
                                trace=trace, rtol=rtol, atol=atol, generator=generator)
        bpd.append(bits_per_dim(result.logp, dim).cpu())
        nfe.append(result.nfe)
        if with_vlb:
            with torch.no_grad():
                bound = ddpm_vlb(
                    scheduler, lambda x_t, t, y=y: model(
                        x_t.to(device), torch.full((len(x_t),), t, device=device), y).cpu(),
                    x.double(), generator=generator)
            vlb_bpd.append(bound.bits_per_dim)
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    mean, stderr = _mean_and_stderr(torch.cat(bpd))
    result = NllResult(mean, stderr, len(images), trace, sum(nfe) / len(nfe))
    if with_vlb:
        result.vlb_bits_per_dim, result.vlb_stderr = _mean_and_stderr(torch.cat(vlb_bpd))
    return result
