"""What a network built on a frozen base saves and loads: a LoRA network (``models.lora``) its
adapter, a ControlNet (``models.controlnet``) everything but its ``base.``; the base's weights
come from the base run, which the run's config names with the checksum of its checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from diffusion.errors import CheckpointError
from diffusion.models.controlnet import ControlNet
from diffusion.models.lora import adapter_state, is_lora


def frozen_base(model: nn.Module) -> bool:
    return is_lora(model) or isinstance(model, ControlNet)


def saved_state(model: nn.Module, state: dict) -> dict:
    """The part of ``model``'s ``state`` (its ``state_dict``) that a checkpoint keeps."""
    if is_lora(model):
        return adapter_state(state)
    if isinstance(model, ControlNet):
        return {key: value for key, value in state.items() if not key.startswith("base.")}
    return state


def load_saved(model: nn.Module, state: dict, what: str, path: Path | str) -> None:
    """``state`` (as ``saved_state`` keeps it) into ``model``, whose base weights are already in
    place for a frozen-base network; a mismatch said in one sentence naming ``path``."""
    if not frozen_base(model):
        model.load_state_dict(state)
        return
    expected = set(saved_state(model, model.state_dict()))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        kind = "LoRA adapter" if is_lora(model) else "ControlNet"
        raise CheckpointError(f"{path} holds another {what} {kind} than the config describes "
                              f"({detail}; {len(missing)} missing, {len(extra)} unexpected): "
                              "load it with the settings it was trained with.")
    model.load_state_dict(state, strict=False)
