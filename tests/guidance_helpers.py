"""Closed-form class-conditional models for the guidance tests.

A Gaussian mixture whose components are the classes: the exact conditional model answers with
component y alone (the null label, index K, with the whole mixture), and the exact noise-aware
classifier is the Bayes posterior p(y | x_t) = responsibility of component y. Then
grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) holds exactly, which is what
classifier guidance at scale 1 must reproduce.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.oracle.mixtures import ExactModel, GaussianMixture

f64 = torch.float64


def mixture(dim: int = 4, classes: int = 3, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(classes, generator=g, dtype=f64) + 0.5
    return GaussianMixture("classes", weights / weights.sum(),
                           torch.rand(classes, dim, generator=g, dtype=f64) - 0.5,
                           0.05 + 0.1 * torch.rand(classes, generator=g, dtype=f64))


def component(m: GaussianMixture, k: int) -> GaussianMixture:
    return GaussianMixture(f"{m.name}[{k}]", torch.ones(1, dtype=f64), m.means[k:k + 1],
                           m.stds[k:k + 1])


class ExactClassModel(nn.Module):
    """``forward(x, t, y)``: the exact prediction given class y (None or K: unconditional)."""

    def __init__(self, m: GaussianMixture, alphas_cumprod, prediction_type="epsilon"):
        super().__init__()
        self.num_classes = len(m.weights)
        self.parts = nn.ModuleList(
            [ExactModel(component(m, k), alphas_cumprod, prediction_type)
             for k in range(self.num_classes)]
            + [ExactModel(m, alphas_cumprod, prediction_type)])
        self.batch_sizes: list[int] = []

    def forward(self, x, t, y=None):
        self.batch_sizes.append(len(x))
        y = torch.full((len(x),), self.num_classes) if y is None else y.cpu()
        t = torch.as_tensor(t).reshape(-1).expand(len(x)) if torch.as_tensor(t).numel() == 1 \
            else torch.as_tensor(t)
        out = torch.empty_like(x)
        for k in y.unique().tolist():
            pick = y == k
            out[pick] = self.parts[k](x[pick], t[pick.to(t.device)])
        return out


class ExactClassifier(nn.Module):
    """logits(x_t, t) = log w_y + log N(x_t; sqrt(a) mu_y, v_y I): the Bayes classifier."""

    def __init__(self, m: GaussianMixture, alphas_cumprod):
        super().__init__()
        self.mixture, self.num_classes = m, len(m.weights)
        self.clock = ExactModel(m, alphas_cumprod)  # its alpha_bar look-up

    def forward(self, x, t):
        a = self.clock.alpha_bar(t, len(x))
        logits, _ = self.mixture._log_components(x.reshape(len(x), -1).to(f64), a)
        return logits
