"""``finetune=lora|full`` and ``init_from=`` on ``diffusion.train``: the base a fine-tuning run
adapts, resolved, checked and recorded before anything trains.

``init_from`` is ``trainer.init_from``'s other name (a run folder: its newest checkpoint's EMA
weights; or a checkpoint file). ``finetune=full`` trains every weight from there; ``lora``
freezes them and trains a peft adapter (``diffusion.models.lora``). Both take the network's
settings from the base run (a LoRA adapter only fits the network it was made for) and record
``finetune.base``: the base run, its checkpoint and that file's sha256, which a resume and
every loader of the run check.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.checks import check_choice
from diffusion.errors import CheckpointError, ConfigError
from diffusion.models.lora import add_lora
from diffusion.runs.load import (
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
    """Check ``finetune`` and, for a new fine-tuning run, take the base run's network settings
    and record its checkpoint and sha256 in ``cfg.finetune.base`` (a resume checks them)."""
    finetune = cfg.get("finetune") or {"method": "none"}
    method = check_choice("finetune", finetune.get("method"), METHODS)
    if method == "lora":
        lora_spec(finetune)  # the rank, alpha, dropout and targets checked now
    if method == "none":
        return
    if resuming:
        base = finetune.get("base") or {}
        path = Path(base.get("checkpoint") or "")
        if not path.is_file() or file_sha256(path) != base.get("sha256"):
            raise CheckpointError(f"this run fine-tunes {base.get('checkpoint')}, which is gone "
                                  f"or changed since it started (sha256): restore that file "
                                  f"to resume.")
        return
    source = cfg.trainer.get("init_from")
    if not source:
        raise ConfigError(f"finetune={method} adapts a trained model: add init_from=<its run "
                          f"folder> (or a checkpoint of it).")
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
    if base_cfg.get("latent_space") and not cfg.get("latent"):
        raise ConfigError(f"init_from={source} is a latent run: add latent=<its autoencoder "
                          f"run> ({base_cfg['latent_space'].get('run')}) to fine-tune it.")
    with open_dict(cfg):
        if OmegaConf.to_container(cfg.model, resolve=True) != base_cfg["model"]:
            log.info("finetune=%s: the network is the base run's (model settings from %s).",
                     method, run)
        cfg.model = OmegaConf.create(base_cfg["model"])
        cfg.finetune.base = {"run": str(run.resolve()), "checkpoint": str(checkpoint.resolve()),
                             "sha256": file_sha256(checkpoint)}
        cfg.trainer.init_from = cfg.init_from = str(checkpoint.resolve())


def finetune_model(cfg: DictConfig, model):
    """The network a fine-tuning run trains: for ``finetune=lora``, ``model`` with the base
    run's weights and the adapter on them (only the adapter trains); any other run's as it
    is (``finetune=full`` loads its start through ``trainer.init_from``)."""
    record = lora_record(OmegaConf.to_container(cfg, resolve=True))
    if record is None:
        return model
    load_base_weights(model, record, "this run")
    return add_lora(model, lora_spec(record))


def uses_init_weights(cfg: DictConfig) -> bool:
    """Whether the trainer loads ``trainer.init_from`` itself (not a LoRA run: its base is in
    the network before the adapter goes on)."""
    return (cfg.get("finetune") or {}).get("method") != "lora"
