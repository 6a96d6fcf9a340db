"""A discrete DDPM process (a table of alpha_bar over T training steps) seen in continuous
time, so that the score-SDE samplers and likelihoods run on models trained by the DDPM
schedulers, unchanged.

Time t in [0, 1] is the training step s = t (T - 1): at s = 0, 1, ..., T - 1 alpha(t)^2 is the
table's alpha_bar(s) exactly, and the network is told s itself (``model_time``), so a DDPM
network sees exactly what it was trained on there. Between steps log alpha_bar is linear in s
(geometric interpolation: piecewise-constant f(t) = d log alpha / dt, the continuous limit of
each step's beta), which keeps alpha decreasing and sigma^2 = 1 - alpha^2 increasing.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusion.processes.base import Process, Tensor, as_time


class DiscreteProcess(Process):
    """The process of a table ``alphas_cumprod`` (T values, decreasing); see the module
    docstring. ``DiscreteProcess.of(scheduler)`` takes a DDPM scheduler's table and
    prediction type."""

    name = "discrete"

    def __init__(self, alphas_cumprod, *, t_min: float = 0.0, **options: Any):
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if table.numel() < 2 or not bool(((table > 0) & (table < 1)).all()) \
                or not bool((table[1:] < table[:-1]).all()):
            raise ValueError("alphas_cumprod must be at least 2 decreasing values in (0, 1).")
        super().__init__(t_min=t_min, model_steps=table.numel(), **options)
        self.alphas_cumprod = table
        self._log_alpha_table = 0.5 * torch.log(table)
        self._tables_on: dict[torch.device, Tensor] = {}  # the table on each device asked

    @classmethod
    def of(cls, scheduler, **options: Any) -> DiscreteProcess:
        """The process of a ``NoiseScheduler`` (its alphas_cumprod and prediction type)."""
        options.setdefault("prediction_type", scheduler.prediction_type)
        return cls(scheduler.alphas_cumprod, **options)

    @property
    def config(self) -> dict[str, Any]:
        config = super().config
        del config["model_steps"]  # the table's length
        return {**config, "alphas_cumprod": self.alphas_cumprod.tolist()}

    def _where(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(index of the step at or below s = t (T - 1), fraction of the way to the next)."""
        s = as_time(t).clamp(0.0, 1.0) * (self.model_steps - 1)
        low = s.floor().clamp(max=self.model_steps - 2)
        return low.long(), s - low

    def _table(self, device: torch.device) -> Tensor:
        """log alpha at the steps, on ``device`` (copied there once), so that times on a GPU
        are looked up without a copy to the host."""
        if device not in self._tables_on:
            self._tables_on[device] = self._log_alpha_table.to(device)
        return self._tables_on[device]

    def _log_alpha(self, t: float | Tensor) -> Tensor:
        low, frac = self._where(t)
        table = self._table(low.device)
        return table[low] + frac * (table[low + 1] - table[low])

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return (-torch.expm1(2.0 * self._log_alpha(t))).sqrt()

    def d_log_alpha(self, t):
        low, _ = self._where(t)
        table = self._table(low.device)
        return (table[low + 1] - table[low]) * (self.model_steps - 1)

    def d_sigma2(self, t):
        return -2.0 * self.d_log_alpha(t) * torch.exp(2.0 * self._log_alpha(t))
