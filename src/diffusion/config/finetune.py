"""``finetune=lora|full``, ``control=edges|blur|mask`` and ``init_from=`` on ``diffusion.train``:
the base a fine-tuning or ControlNet run adapts, resolved, checked and recorded before anything
trains.

``init_from`` is ``trainer.init_from``'s other name (a run folder: its newest checkpoint's EMA
weights; or a checkpoint file). ``finetune=full`` trains every weight from there; ``lora``
freezes them and trains a peft adapter (``diffusion.models.lora``). Both take the network's
settings from the base run (a LoRA adapter only fits the network it was made for) and record
``finetune.base``: the base run, its checkpoint and that file's sha256, which a resume and
every loader of the run check. ``control=`` trains a ControlNet (``diffusion.models.controlnet``)
on the frozen base network, and records the same in ``control.base``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.checks import check_choice
from diffusion.errors import CheckpointError, ConfigError
from diffusion.models.controlnet import ControlNet
from diffusion.models.lora import add_lora
from diffusion.runs.load import (
    control_images,
    load_base_weights,
    lora_record,
    lora_spec,
    newest_checkpoint,
    read_config,
)
from diffusion.training.checkpoint import file_sha256

log = logging.getLogger("diffusion.train")
METHODS = ("none", "full", "lora")


def resolve_init_from(cfg: DictConfig) -> None:
    """``init_from=`` into ``trainer.init_from`` (both given: the same path, or refused)."""
    top, inner = cfg.get("init_from"), cfg.trainer.get("init_from")
    if top and inner and str(top) != str(inner):
        raise ConfigError(f"init_from={top} and trainer.init_from={inner} name two starts: "
                          f"pass one of them.")
    if top:
        with open_dict(cfg):
            cfg.trainer.init_from = str(top)


def prepare_finetune(cfg: DictConfig, resuming: bool) -> None:
    """Check ``finetune`` and ``control`` and, for a new run that adapts a base, take the base
    run's network settings and record its checkpoint and sha256 in ``<finetune|control>.base``
    (a resume checks them)."""
    finetune = cfg.get("finetune") or {"method": "none"}
    method = check_choice("finetune", finetune.get("method"), METHODS)
    if method == "lora":
        lora_spec(finetune)  # the rank, alpha, dropout and targets checked now
    control = control_images(OmegaConf.to_container(cfg, resolve=True))
    if control is not None and method != "none":
        raise ConfigError(f"control={control.kind} trains a ControlNet on a frozen base and "
                          f"finetune={method} adapts the base itself: run one of them (a "
                          f"ControlNet on the fine-tuned run: init_from=<that run>).")
    if control is not None and (cfg.get("low_res") or cfg.get("latent")):
        raise ConfigError(f"control={control.kind} adapts a pixel-space run without "
                          f"conditioning=low_res: drop latent= / conditioning=low_res.")
    node = cfg.finetune if method != "none" else cfg.control if control is not None else None
    if node is None:
        return
    what = f"finetune={method}" if control is None else f"control={control.kind}"
    if resuming:
        base = node.get("base") or {}
        path = Path(base.get("checkpoint") or "")
        if not path.is_file() or file_sha256(path) != base.get("sha256"):
            raise CheckpointError(f"this run adapts {base.get('checkpoint')}, which is gone "
                                  f"or changed since it started (sha256): restore that file "
                                  f"to resume.")
        return
    source = cfg.trainer.get("init_from")
    if not source:
        raise ConfigError(f"{what} adapts a trained model: add init_from=<its run folder> (or a "
                          f"checkpoint of it).")
    source = Path(source)
    if source.is_dir():
        run, checkpoint = source, newest_checkpoint(source, "train it first")
    elif source.is_file():
        run, checkpoint = source.parent.parent, source
    else:
        raise CheckpointError(f"init_from={source} is neither a run folder nor a checkpoint: "
                              f"pass the folder diffusion.train printed.")
    base_cfg = read_config(run, key="init_from")
    if "model" not in base_cfg:
        raise ConfigError(f"init_from={source} is not a diffusion run (no model in its "
                          f"config): pass a folder that diffusion.train wrote.")
    if lora_record(base_cfg) is not None or control_images(base_cfg) is not None:
        raise ConfigError(f"init_from={source} is itself a LoRA or ControlNet run, whose "
                          f"checkpoints hold only its adapter: merge it first (diffusion.export "
                          f"run={source} out=<folder> format=run) and start from that folder.")
    if base_cfg.get("latent_space") and not cfg.get("latent"):
        raise ConfigError(f"init_from={source} is a latent run: add latent=<its autoencoder "
                          f"run> ({base_cfg['latent_space'].get('run')}) to fine-tune it.")
    if control is not None and not str(base_cfg["model"].get("_target_", "")).endswith(
            "AttentionUNet"):
        raise ConfigError(f"control={control.kind} adapts an attention UNet (model=unet_attn); "
                          f"init_from={source} trained {base_cfg['model'].get('_target_')}.")
    with open_dict(cfg):
        if OmegaConf.to_container(cfg.model, resolve=True) != base_cfg["model"]:
            log.info("%s: the network is the base run's (model settings from %s).", what, run)
        cfg.model = OmegaConf.create(base_cfg["model"])
        node.base = {"run": str(run.resolve()), "checkpoint": str(checkpoint.resolve()),
                     "sha256": file_sha256(checkpoint)}
        cfg.trainer.init_from = cfg.init_from = str(checkpoint.resolve())


def finetune_model(cfg: DictConfig, model):
    """The network a run trains: for ``finetune=lora``, ``model`` with the base run's weights
    and the adapter on them (only the adapter trains); for ``control=``, the frozen base under
    a ControlNet; any other run's as it is (``finetune=full`` loads its start through
    ``trainer.init_from``)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    record, control = lora_record(plain), control_images(plain)
    if record is not None:
        load_base_weights(model, record, "this run")
        return add_lora(model, lora_spec(record))
    if control is not None:
        load_base_weights(model, plain["control"], "this run")
        return ControlNet(model, control.channels(int(cfg.data.channels)))
    return model


def uses_init_weights(cfg: DictConfig) -> bool:
    """Whether the trainer loads ``trainer.init_from`` itself (not a LoRA or ControlNet run:
    their base is in the network before the adapter goes on)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return lora_record(plain) is None and control_images(plain) is None
