"""Config -> objects, with every user mistake reported as one sentence naming the key.

Used by the entry points only; the objects built here know nothing of Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.checks import check_int
from diffusion.config.legacy import (
    OLD_TRAINER_OBJECTIVE_KEYS,
    OLD_TRAINER_SAMPLER_KEYS,
    current_target,
    moved_key_message,
)
from diffusion.config.sampler import training_sampler
from diffusion.data import dataset_info
from diffusion.errors import USER_ERRORS, ConfigError
from diffusion.models.diffusers_unet import weights_follow
from diffusion.models.low_res import LowResConditioning
from diffusion.processes import sigma_max_from_data
from diffusion.runtime.device import resolve_device
from diffusion.training.loggers import LoggerGroup
from diffusion.training.objectives import Objective

log = logging.getLogger(__name__)


def _instantiate(group: str, node: DictConfig, **kwargs):
    """Instantiate ``node`` (an earlier version's ``_target_`` at its new place); a ValueError
    from the constructor becomes a ConfigError that names ``<group>.<argument>``."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if target is not None and current_target(target) != target:
        node = OmegaConf.merge(node, {"_target_": current_target(target)})
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, ValueError | TypeError):  # ConfigError is a ValueError
            message = str(cause)
            first = message.split(" ", 1)[0].strip("`'\":,")
            if first in node:  # the constructor's argument, named as the config spells it
                raise ConfigError(f"Invalid {group} config: {group}.{message}") from None
            if isinstance(cause, ConfigError):  # already names its key in full
                raise cause from None
            raise ConfigError(f"Invalid {group} config: {message}") from None
        if isinstance(cause, USER_ERRORS):  # missing or damaged files: their own sentence
            raise cause from None
        first = str(exc).splitlines()[0].split(", set env var")[0]
        raise ConfigError(f"Invalid {group} config: {first}: check {group}._target_ and its "
                          "keys (python -m diffusion.train --cfg job prints them).") from None


def validate(cfg: DictConfig) -> None:
    """Cross-group checks that no single constructor can make, before any work starts."""
    data, model = cfg.data, cfg.model
    for key in ("image_size", "batch_size", "channels"):
        check_int(f"data.{key}", data.get(key))
    check_int("data.num_workers", data.get("num_workers"), minimum=0)
    latent = cfg.get("latent_space")
    if latent:  # the network denoises the latents (config/latent.py set its shape)
        channels, size = latent.shape[0], latent.shape[1]
        if (model.get("in_channels"), model.get("image_size")) != (channels, size):
            raise ConfigError(
                f"a latent run's network takes the latents' {channels} channels at {size} px; "
                f"model.in_channels is {model.get('in_channels')} and model.image_size "
                f"{model.get('image_size')}: drop those overrides.")
    elif model.get("in_channels") != data.channels:
        raise ConfigError(
            f"model.in_channels is {model.get('in_channels')} but data {data.name} has "
            f"{data.channels} channel(s); drop the model.in_channels override or pick matching "
            "data.")
    if not latent and model.get("image_size") not in (None, data.image_size):
        raise ConfigError(
            f"model.image_size is {model.image_size} but data.image_size is {data.image_size}; "
            "set data.image_size and leave model.image_size to follow it.")
    check_int("seed", cfg.seed, minimum=None)
    _validate_low_res(cfg)
    classes, data_classes = model.get("num_classes"), data.get("num_classes")
    if classes is not None and data_classes is not None and classes != data_classes:
        raise ConfigError(
            f"model.num_classes is {classes} but data {data.name} has {data_classes} classes; "
            f"set model.num_classes={data_classes}, or null for an unconditional model.")


def _validate_low_res(cfg: DictConfig) -> None:
    """A super-resolution stage: its conditioning built, the network taking the image beside
    x, a size the factor divides, pixels (not latents), and no periodic FID (it samples
    without inputs)."""
    low_res, cond = build_low_res(cfg), cfg.model.get("cond_channels") or 0
    if low_res is None:
        if cond:
            raise ConfigError(f"model.cond_channels={cond} gives the network an image to "
                              "condition on, which only conditioning=low_res provides: drop it "
                              "or add conditioning=low_res.")
        return
    if cond != cfg.data.channels:
        raise ConfigError(f"a super-resolution stage takes its {cfg.data.channels}-channel "
                          f"input beside x: model.cond_channels must be {cfg.data.channels}, "
                          f"not {cond} (conditioning=low_res sets it).")
    if cfg.data.image_size % low_res.factor:
        raise ConfigError(f"low_res.factor={low_res.factor} does not divide data.image_size="
                          f"{cfg.data.image_size}: pick a factor of it.")
    if cfg.get("latent"):
        raise ConfigError("a super-resolution stage runs in pixels: drop latent= or "
                          "conditioning=low_res.")
    if cfg.trainer.get("eval_every"):
        raise ConfigError("the periodic FID samples without low-resolution inputs, so a "
                          "super-resolution stage trains with trainer.eval_every=0; score the "
                          "cascade with python -m diffusion.evaluate run=<base> upsample=<run>.")


def check_device(device: str) -> None:
    """``trainer.device`` must name a device this machine has."""
    try:
        resolve_device(device, key="trainer.device")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_trainer_config(cfg: DictConfig):
    """``trainer.*`` as a TrainerConfig. The sampling keys of run folders from before the
    ``sampler`` group are left to ``training_sampler``; anywhere else they are refused with
    where they went."""
    node = cfg.trainer
    for keys, group in ((OLD_TRAINER_SAMPLER_KEYS, "sampler"),
                        (OLD_TRAINER_OBJECTIVE_KEYS, "objective")):
        old = [key for key in keys if key in node]
        if old and cfg.get(group) is not None:
            raise ConfigError(moved_key_message(f"trainer.{old[0]}"))
        if old:
            node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node).items()
                                     if k not in keys})
    return _instantiate("trainer", node)


def build_objective(cfg: DictConfig, scheduler) -> Objective:
    """The ``objective`` group's Objective over the training ``scheduler``. A run folder
    from before the group trained its scheduler's target, unweighted, with trainer.loss."""
    node = cfg.get("objective")
    try:
        if node is None:
            trainer = cfg.get("trainer") or {}
            return Objective(scheduler, **{k: trainer[k] for k in OLD_TRAINER_OBJECTIVE_KEYS
                                           if k in trainer})
        return _instantiate("objective", node)(scheduler)
    except TypeError as exc:  # the partial's call: an argument the objective does not take
        raise ConfigError(f"Invalid objective config: {exc}: drop the key or check its "
                          "spelling (conf/objective/ shows each objective's keys).") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_training_sampler(cfg: DictConfig):
    """The grids' and periodic FID's sampler (``sampler`` group), checked against the run's
    training scheduler."""
    try:
        sampler = training_sampler(cfg)
        scheduler = build_scheduler(cfg)
        sampler.check(scheduler.num_train_timesteps, scheduler=scheduler)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return sampler


def build_model(cfg: DictConfig, checkpoint_follows: bool = False):
    """The network of ``cfg.model``; ``checkpoint_follows``: its weights will come from a
    checkpoint, so a fine-tuning run's recorded network replaces its pretrained folder."""
    node = cfg.model
    if checkpoint_follows:
        node = OmegaConf.create(weights_follow(OmegaConf.to_container(node, resolve=True)))
    return _instantiate("model", node)


def build_optimizer(cfg: DictConfig):
    """The optimizer factory of ``cfg.optimizer`` (``_partial_``), its arguments plain Python
    (``betas`` a list, not a ListConfig: the optimizer's state is saved in checkpoints, which
    load with ``weights_only=True``)."""
    return _instantiate("optimizer", cfg.optimizer, _convert_="all")


def build_lr_scheduler(cfg: DictConfig):
    """The LR schedule factory of ``cfg.lr_scheduler``, or None without one."""
    if not cfg.get("lr_scheduler"):
        return None
    return _instantiate("lr_scheduler", cfg.lr_scheduler, _convert_="all")


def build_scheduler(cfg: DictConfig):
    return _instantiate("scheduler", cfg.scheduler)


def fit_to_data(cfg: DictConfig, scheduler, train_set, max_images: int = 5000):
    """The training noise process with what it measures from the data: a VE process's
    ``sigma_max: null`` becomes the largest distance between two of the first ``max_images``
    training images (Song & Ermon 2020), written into ``cfg`` so the run records it. A process
    with a ``sigma_data`` of its own (EDM's) has the training images' std logged beside it."""
    if "sigma_data" in getattr(scheduler, "config", {}):
        n = min(len(train_set), max_images)
        std = float(torch.stack([train_set[i][0] for i in range(n)]).double().std())
        log.info("scheduler.sigma_data = %s; the std of the first %d training images is %.4f",
                 scheduler.sigma_data, n, std)
    if not hasattr(scheduler, "sigma_max") or scheduler.sigma_max is not None:
        return scheduler
    n = min(len(train_set), max_images)
    images = torch.stack([train_set[i][0] for i in range(n)])
    with open_dict(cfg.scheduler):
        cfg.scheduler.sigma_max = round(sigma_max_from_data(images), 4)
    log.info("scheduler.sigma_max = %s: the largest distance between two of the first %d "
             "training images (Song & Ermon 2020)", cfg.scheduler.sigma_max, n)
    return build_scheduler(cfg)


def build_low_res(cfg: DictConfig) -> LowResConditioning | None:
    """A super-resolution stage's conditioning (``low_res``: conditioning=low_res), or None."""
    node = cfg.get("low_res")
    if not node:
        return None
    unknown = sorted(set(node) - {"factor", "aug_max", "level"})
    if unknown:
        raise ConfigError(f"low_res has no key {unknown[0]}: it takes factor, aug_max, level.")
    return LowResConditioning(**OmegaConf.to_container(node, resolve=True))


def build_classifier(cfg: DictConfig):
    """The noise-aware classifier of a ``diffusion.train_classifier`` config."""
    return _instantiate("classifier_net", cfg.classifier_net)


def build_autoencoder(node: DictConfig):
    """The ``AutoencoderKL`` of an ``autoencoder`` config node (a ``diffusion.train_autoencoder``
    config's, or the one a latent run stores)."""
    return _instantiate("autoencoder", node)


DATASET_SETTINGS_ELSEWHERE = ("name", "channels", "num_classes", "train_split", "val_split",
                              "batch_size", "num_workers", "on_device")
"""Keys of ``data`` that are not arguments of its ``_target_``: the description that other
groups interpolate (checked against the class instead), the splits to build, and the trainer's
batch settings."""


def build_datasets(data: DictConfig):
    """(train, validation) datasets of images scaled to [-1, 1], built by ``data._target_``
    (an ``ImageDataset`` class) from the rest of ``data``."""
    node = {key: value for key, value in OmegaConf.to_container(data, resolve=True).items()
            if key not in DATASET_SETTINGS_ELSEWHERE}
    if "_target_" not in node:  # run folders from before data configs named their class
        try:
            cls = dataset_info(data.get("name"))
        except ValueError:
            raise ConfigError("data._target_ is missing: set it to the dataset's class, as "
                              "conf/data/*.yaml do (e.g. +data._target_=diffusion.data."
                              "MNISTDataset).") from None
        node["_target_"] = f"{cls.__module__}.{cls.__qualname__}"

    train = _instantiate("data", node, split=data.train_split)
    for key in ("name", "channels", "num_classes"):
        if data.get(key) != getattr(train, key):
            raise ConfigError(f"data.{key} is {data.get(key)!r} but {data._target_} has "
                              f"{getattr(train, key)!r}; the config must describe its class.")
    val = (_instantiate("data", node, split=data.val_split, random_flip=False)
           if data.get("val_split") else None)
    return train, val


def logger_configs(logger: DictConfig | None) -> dict[str, DictConfig]:
    """The loggers a run's ``logger`` node names, by name: ``{wandb: ..., tensorboard: ...}``
    (``logger=[wandb,tensorboard]``); a run of an earlier version holds one logger's settings
    directly (``logger._target_``)."""
    if not logger:
        return {}
    if "_target_" in logger:
        return {str(logger._target_).rsplit(".", 1)[-1]: logger}
    return {name: sub for name, sub in logger.items()
            if OmegaConf.is_dict(sub) and "_target_" in sub}


def build_logger(cfg: DictConfig, run_dir: Path, resuming: bool) -> LoggerGroup | None:
    """The configured external loggers (``logger=wandb``, ``logger=[wandb,tensorboard,csv]``)
    as one group, or None for ``logger=none``. A logger that cannot start (its package is
    missing, its service refuses) is named in one line, and training goes on without it."""
    started = []
    for name, logger_cfg in logger_configs(cfg.get("logger")).items():
        extra = {}
        if str(logger_cfg._target_).endswith("WandbLogger"):
            id_file = run_dir / "wandb_id.txt"
            extra = {"name": f"{cfg.name}/{run_dir.name}",
                     "resume_id": id_file.read_text().strip()
                     if resuming and id_file.is_file() else None}
        try:
            started.append(_instantiate("logger", logger_cfg, run_dir=str(run_dir), **extra))
        except ConfigError as exc:  # a wrong setting stops; a logger that cannot start does not
            cause = getattr(exc.__context__, "__cause__", None)
            if cause is None or isinstance(cause, ValueError | TypeError):
                raise
            log.warning("logger %s could not start (%s); training goes on without it.", name,
                        str(cause).splitlines()[0] if str(cause) else type(cause).__name__)
    return LoggerGroup(started) if started else None
