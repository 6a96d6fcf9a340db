"""Exponential moving average of a model's weights.

The EMA copy is what every sample, evaluation and export uses: diffusion models
sampled from raw weights are visibly worse than from their average (Ho et al.
2020 use decay 0.9999). The update is one fused ``lerp`` over all parameters so
it costs a single pass over the weights and never synchronises with the host.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``self.model``, an averaged copy of ``model``.

    ``decay`` is the target decay; with ``warmup`` the effective decay ramps as
    ``min(decay, (1 + n) / (10 + n))`` over the first updates (as in the DDPM and
    diffusers implementations), so early samples are not dominated by the random
    initialisation. ``update_every`` > 1 updates every k-th step with the decay
    raised to the k-th power, which keeps the same time constant.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 update_every: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        if update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}.")
        self.decay = decay
        self.warmup = warmup
        self.update_every = update_every
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        decay = self.decay
        if self.warmup:
            n = self.num_updates
            decay = min(decay, (1 + n) / (10 + n))
        return decay ** self.update_every

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average ``model`` in; a no-op unless ``step`` is a multiple of update_every."""
        if step % self.update_every:
            return
        weight = 1.0 - self.current_decay()
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        if ema_params:
            torch._foreach_lerp_(ema_params, params, weight)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
