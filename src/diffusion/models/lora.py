"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") on any backbone,
through ``peft``: each targeted convolution or linear layer W gains a low-rank update,
W + (alpha / r) B A with A (r x in) and B (out x r), B zero-initialised so the adapted network
starts as the base one exactly; only A and B train, the base stays frozen.

Layers are addressed by their module names as ``peft`` reads ``target_modules``: a name matches
when it equals a module's full name or ends it after a dot (``qkv`` targets every attention
block's ``...qkv``). The default targets every ``Conv2d`` and ``Linear`` of the network: the
residual blocks' convolutions, the attention projections, the time embedding and the input and
output convolutions. ``adapter_state`` is what a LoRA run saves (the adapter alone: a few
percent of the network); ``merge_lora`` folds the adapter into the base weights, giving back
the plain network (its ``state_dict`` loads into a model built without LoRA).

``peft`` is imported on first use: it pulls in ``transformers``, seconds of import time that
every other command is spared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from diffusion.checks import check_int, check_number
from diffusion.errors import ConfigError

ADAPTER = "default"
MARK = ".lora_"  # in the state-dict key of every adapter tensor (peft's names)


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("finetune=lora needs peft: pip install peft (or pip install -e .).") \
            from None
    return peft


@dataclass
class LoRA:
    """``rank`` r, ``alpha`` (None: r, a scale alpha / r of 1), ``dropout`` on the adapter's
    input, and ``target_modules`` (None: every convolution and linear layer)."""

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: Sequence[str] | None = field(default=None)

    def __post_init__(self):
        check_int("finetune.rank", self.rank)
        if self.alpha is not None:
            check_number("finetune.alpha", self.alpha, above=0)
        check_number("finetune.dropout", self.dropout, 0, None, below=1.0)
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not all(
                    isinstance(name, str) and name for name in self.target_modules) \
                    or not self.target_modules:
                raise ConfigError(f"finetune.target_modules must be a list of layer names "
                                  f"(e.g. [qkv,proj]) or null (every convolution and linear "
                                  f"layer); got {self.target_modules!r}.")
            self.target_modules = list(self.target_modules)

    def targets(self, model: nn.Module) -> list[str]:
        """The full names of the layers the adapter goes on, checked: every name given
        matches at least one convolution or linear layer of ``model``."""
        layers = [name for name, module in model.named_modules()
                  if isinstance(module, nn.Conv2d | nn.Linear) and name]
        if self.target_modules is None:
            return layers
        chosen = []
        for wanted in self.target_modules:
            found = [name for name in layers if name == wanted or name.endswith("." + wanted)]
            if not found:
                ends = sorted({name.rsplit(".", 1)[-1] for name in layers})
                raise ConfigError(f"finetune.target_modules names {wanted!r}, which is no "
                                  f"convolution or linear layer of {type(model).__name__}: use "
                                  f"names of its layers (their last parts: "
                                  f"{', '.join(ends)}), or null for all of them.")
            chosen += [name for name in found if name not in chosen]
        return chosen

    def config(self, model: nn.Module):
        """peft's ``LoraConfig`` for ``model``."""
        return _peft().LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank,
                                  lora_dropout=self.dropout, target_modules=self.targets(model),
                                  bias="none")


def add_lora(model: nn.Module, spec: LoRA) -> nn.Module:
    """``model`` with ``spec``'s adapter injected (in place) and everything else frozen."""
    if is_lora(model):
        raise ConfigError("this network already carries a LoRA adapter: merge it first "
                          "(diffusion.models.lora.merge_lora).")
    model = _peft().inject_adapter_in_model(spec.config(model), model, adapter_name=ADAPTER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(MARK in "." + name)
    return model


def is_lora(model: nn.Module) -> bool:
    return any(MARK in "." + name for name, _ in model.named_parameters())


def adapter_state(state: dict) -> dict:
    """The adapter's tensors of a LoRA network's ``state_dict`` (what a LoRA run saves)."""
    return {key: value for key, value in state.items() if MARK in "." + key}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """``model`` with every adapter folded into its base layer (W + alpha / r B A) and the
    peft wrappers replaced by those plain layers, in place: the network a model built without
    LoRA is, with the adapted weights."""
    layers = _peft().tuners.lora.LoraLayer
    wrapped = [(name, module) for name, module in model.named_modules()
               if isinstance(module, layers)]
    for name, module in wrapped:
        module.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = module.get_base_layer()
        base.requires_grad_(True)
        setattr(parent, child, base)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
