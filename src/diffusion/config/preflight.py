"""Check a ``diffusion.train`` command before anything is written or trained.

Every job of the command (one for a run, one per combination for ``-m`` sweeps) is composed
and checked here: group choices, value ranges, the network's shape, the optimizer and LR
schedule are all tried on the meta device or on a dummy parameter, so a mistake in job 7 of a
sweep stops the sweep before job 0 starts, and a rejected command leaves no run folder. A
resume is checked against the run it continues: what the checkpoint fixes (network,
noise schedule, data shape) cannot change, and a run already at ``trainer.max_steps`` has
nothing to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from hydra import compose as hydra_compose
from hydra import version
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from diffusion.checks import check_number, check_writable
from diffusion.config.build import (
    build_model,
    build_objective,
    build_scheduler,
    build_trainer_config,
    build_training_sampler,
    check_device,
    validate,
)
from diffusion.config.keys import check_commas, check_group_key, check_name_override
from diffusion.config.latent import fit_to_latent
from diffusion.config.legacy import MOVED_KEYS, moved_key_message
from diffusion.config.paths import CONF_DIR
from diffusion.config.runs import run_config
from diffusion.config.sampler import RUN_SAMPLER, RUN_SAMPLER_COMMANDS
from diffusion.errors import USER_ERRORS, ConfigError
from diffusion.training.checkpoint import resumable_checkpoint, step_of

T = TypeVar("T")

FROZEN_ON_RESUME = ("model", "scheduler", "data.name", "data.channels", "data.image_size",
                    "data.center_crop")
"""Keys a resume cannot change: the checkpoint's weights were trained for them."""


@dataclass
class Resume:
    """What a resume continues: the run folder, its checkpoint and step, and the config keys
    the command changes (``{key: (old, new)}``)."""

    run: Path
    checkpoint: Path
    step: int
    changes: dict[str, tuple]


@dataclass
class Job:
    """One job of a command: its overrides, its resolved config (without the ``hydra``
    node) and the folders Hydra would give it."""

    overrides: list[str]
    cfg: DictConfig
    run_dir: str
    sweep_dir: str


class NothingToDo(Exception):
    """The command is valid but has no work left (a resume of a finished run)."""


def is_hydra_key(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def is_searchpath(override: str) -> bool:
    """``hydra.searchpath=[...]``: config folders added to the search path, which the
    checks here must see as Hydra will."""
    return override.lstrip("+~").split("=", 1)[0] == "hydra.searchpath"


def split_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Each job's overrides, expanded the way Hydra's basic sweeper expands a sweep."""
    if not multirun:
        return [overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as exc:
        raise ConfigError(f"Cannot read the sweep: {_first_line(exc)}.") from None


def check_jobs(config_dir: Path, config_name: str, overrides: list[str],
               multirun: bool, extra_dir: Path | None = None) -> list[Job]:
    """Compose and check every job of the command; one ConfigError lists every bad job.
    ``extra_dir`` is the folder of ``--config-dir`` (see ``compose``)."""
    def check(job_overrides: list[str]) -> Job:
        job = compose(config_dir, config_name, job_overrides, extra_dir)
        check_config(job.cfg)
        return job

    check_commas(overrides, multirun)
    return check_each(split_jobs(overrides, multirun), check, multirun)


def check_each(expanded: list[list[str]], check: Callable[[list[str]], T],
               multirun: bool = True) -> list[T]:
    """``check(overrides)`` for every job of a command; in a sweep, one ConfigError names
    every bad job (by the overrides it sweeps) and its sentence, so none starts."""
    results, problems = [], []
    shared = set.intersection(*(set(job) for job in expanded)) if expanded else set()
    for number, job_overrides in enumerate(expanded):
        try:
            results.append(check(job_overrides))
        except (*USER_ERRORS, ValueError) as exc:
            if not multirun:
                raise
            swept = " ".join(o for o in job_overrides if o not in shared)
            problems.append(f"job {number} ({swept}): {exc}")
    if problems:
        raise ConfigError(f"{len(problems)} of {len(expanded)} sweep jobs are invalid, so "
                          f"none was started: {' '.join(problems)}")
    return results


def compose(config_dir: Path, config_name: str, overrides: list[str],
            extra_dir: Path | None = None, training: bool = True) -> Job:
    """The job Hydra would compose, resolved, or a ConfigError that names the bad
    override. Configs are searched for as ``hydra.main`` searches: ``config_dir``, then
    ``extra_dir`` (a folder of your own, added as ``--config-dir`` adds it), then any
    folders of a ``hydra.searchpath=[...]`` override. ``training``: a training config,
    whose conditioning and added keys are checked here too."""
    check_name_override(overrides)
    GlobalHydra.instance().clear()
    try:
        _initialize(config_dir, extra_dir)
        cfg = hydra_compose(config_name=config_name, overrides=overrides,
                            return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
        if training:
            _check_conditioning(cfg)
            _check_read(cfg, overrides, config_name)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, config_name, overrides)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        unknown = re.search(r"Could not override '([^']+)'", str(exc))
        if unknown and unknown.group(1) in MOVED_KEYS:
            raise ConfigError(moved_key_message(unknown.group(1))) from None
        if unknown:
            check_group_key(unknown.group(1), overrides, config_name)
        what = (f"{unknown.group(1)} is not a config key" if unknown else _first_line(exc))
        raise ConfigError(f"{what}: check the override's spelling (python -m diffusion.train "
                          "--cfg job prints every key).") from None
    finally:
        GlobalHydra.instance().clear()
    return Job(overrides, cfg, run_dir, sweep_dir)


def _check_conditioning(cfg: DictConfig) -> None:
    """``conditioning=class`` on data without classes (an image folder without class
    subfolders) would train an unconditional model: refuse it instead."""
    choice = cfg.hydra.runtime.choices.get("conditioning")
    if choice == "class" and cfg.data.get("num_classes") is None:
        raise ConfigError(
            f"conditioning=class needs labelled data but data {cfg.data.name} has no classes "
            "(an image folder is labelled by one subfolder per class): label the images or "
            "drop conditioning=class.")


TRAIN_KEYS = frozenset(k for k in OmegaConf.load(CONF_DIR / "train.yaml")
                       if k not in ("defaults", "hydra"))
"""The top-level keys of ``conf/train.yaml``: ``++key=`` may add one to the saved config of a
run from before it existed (a rerun with ``++pairs=``, as ``diffusion.reflow`` starts one)."""


def _check_read(cfg: DictConfig, overrides: list[str], config_name: str) -> None:
    """Every override changes something the run reads: ``+key=value`` at the top level adds a
    key nothing reads (unless ``key`` is a config group or one of ``TRAIN_KEYS``), and the
    class-conditional options do nothing on an unconditional model."""
    loader = GlobalHydra.instance().config_loader()
    for override in overrides:
        key = override.lstrip("+").split("=", 1)[0]
        if override.startswith("+") and "." not in key and "/" not in key \
                and not is_hydra_key(override) and key not in TRAIN_KEYS \
                and not loader.get_group_options(
                    key, config_name=config_name,
                    overrides=[o for o in overrides if is_searchpath(o)]):
            raise ConfigError(f"{override} adds a key that diffusion.train does not read: check "
                              "its spelling (python -m diffusion.train --cfg job prints every "
                              "key).")
    if cfg.model.get("num_classes") is None:
        trainer = cfg.get("trainer") or {}
        set_here = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        for key in ("label_dropout", "sample_guidance_scale"):
            if f"trainer.{key}" in set_here or (key == "sample_guidance_scale"
                                                and trainer.get(key) is not None):
                raise ConfigError(
                    f"trainer.{key} applies to class-conditional runs, and this one is "
                    "unconditional (model.num_classes is null): drop it, or add "
                    "conditioning=class.")


def _initialize(config_dir: Path, extra_dir: Path | None) -> None:
    """Hydra set up as ``hydra.main`` sets it up for the primary folder ``config_dir`` and
    ``--config-dir extra_dir`` (``initialize_config_dir`` has no way to add the latter)."""
    version.setbase("1.3")
    search_path = create_config_search_path(str(Path(config_dir).resolve()))
    if extra_dir is not None:
        if not Path(extra_dir).is_dir():
            raise ConfigError(f"--config-dir {extra_dir} is not a folder: pass a folder of "
                              "config files (e.g. one holding experiment/<name>.yaml).")
        search_path.prepend(provider="command-line",
                            path=f"file://{Path(extra_dir).absolute()}",
                            anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")


def _missing_option(exc: Exception, config_name: str, overrides: list[str]) -> str:
    """The option that does not exist and the ones that do, in every folder searched."""
    match = (re.search(r"Could not find '([^']+)/([^'/]+)'", str(exc))
             or re.search(r"Could not load '([^']+)/([^'/]+)'", str(exc)))
    if match is None:
        return f"{_first_line(exc)}."
    group, option = match.groups()
    options = sorted(set(GlobalHydra.instance().config_loader().get_group_options(
        group, config_name=config_name, overrides=[o for o in overrides if is_searchpath(o)])))
    if group == "sampler" and config_name not in RUN_SAMPLER_COMMANDS:
        options = [o for o in options if o != RUN_SAMPLER]  # a trained run's own sampler
    if not options:
        return f"{group} is not a config group: drop the {group}={option} override."
    return (f"{group}={option} is not an option of {group}: choose one of "
            f"{', '.join(options)}.")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs neither data nor a GPU's memory: values, the network's shape
    (built on the meta device), the optimizer and LR schedule (on a dummy parameter)."""

    fit_to_latent(cfg)  # latent=: the network takes the latents' shape
    validate(cfg)
    trainer = build_trainer_config(cfg)
    build_training_sampler(cfg)
    check_device(trainer.device)
    with torch.device("meta"):
        build_model(cfg, checkpoint_follows=cfg.get("resume") is not None)
    build_objective(cfg, build_scheduler(cfg))
    _check_optimizer(cfg.optimizer)
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = _build("optimizer", cfg.optimizer, lambda factory: factory([dummy]))
    if cfg.get("lr_scheduler"):
        _build("lr_scheduler", cfg.lr_scheduler,
               lambda factory: factory(optimizer, total_steps=trainer.max_steps))
    if trainer.eval_every and cfg.get("metrics") is None:
        raise ConfigError("trainer.eval_every needs a metrics config: add metrics=fid or set "
                          "trainer.eval_every=0.")


def _check_optimizer(node: DictConfig) -> None:
    """The usual Adam-family keys, checked by name (torch's own messages do not say which
    config key is wrong)."""
    for key in ("lr", "weight_decay", "eps"):
        if key in node:
            check_number(f"optimizer.{key}", node[key], minimum=0)
    if "betas" in node:
        betas = node.betas
        if (not OmegaConf.is_list(betas) or len(betas) != 2
                or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas)):
            shown = OmegaConf.to_container(betas) if OmegaConf.is_list(betas) else betas
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), e.g. "
                              f"[0.9,0.999]; got {shown!r}.")


def _build(group: str, node: DictConfig, call):
    """Instantiate the ``_partial_`` factory ``node`` and apply ``call`` to it; a ValueError
    or TypeError from either becomes one sentence naming ``group``."""
    try:
        return call(instantiate(node))
    except ConfigError:
        raise
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"Invalid {group} config: {_first_line(cause)}.") from None
    except (ValueError, TypeError) as exc:
        message = _first_line(exc)
        prefix = "" if message.startswith(f"{group}.") else f"Invalid {group} config: "
        raise ConfigError(f"{prefix}{message}.") from None


def flatten(node: Mapping | list, prefix: str = "") -> dict[str, object]:
    """``{"a.b": value}`` for every leaf of a plain container."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node)
    flat: dict[str, object] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_resume_overrides(run: Path, overrides: list[str], key: str = "resume") -> None:
    """A run's saved config has no defaults list, so ``model=unet`` on a resume (or a rerun,
    ``key``) would replace the whole group with a string: refuse group choices, which a run
    composed from its saved config cannot switch."""
    saved = run_config(run, key)
    for override in overrides:
        name = override.lstrip("+~").split("=", 1)[0]
        if "." not in name and (OmegaConf.is_dict(saved.get(name)) or (CONF_DIR / name).is_dir()):
            instead = (f"override single keys ({name}.<key>=...) or start a new run"
                       if OmegaConf.is_dict(saved.get(name)) else "start a new run to change it")
            raise ConfigError(f"{key}={run} cannot switch {override}: a run keeps the groups "
                              f"it started with; {instead}.")


def check_resume(run: Path, cfg: DictConfig) -> Resume:
    """Check that ``cfg`` (the run's config with this command's overrides) can continue
    ``run``; returns what it resumes from and what it changes. Raises NothingToDo when the
    run is already at ``trainer.max_steps``."""
    check_writable(run, "copy the run folder to a writable place and resume the copy",
                   folder=True, what="the run folder")
    checkpoint = resumable_checkpoint(run)
    old = flatten(OmegaConf.to_container(run_config(run, "resume"), resolve=True))
    new = flatten(OmegaConf.to_container(cfg, resolve=True))
    changes = {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if key != "resume" and not key.startswith("hydra.")
               and old.get(key) != new.get(key)}
    frozen = [key for key in changes
              if any(key == f or key.startswith(f"{f}.") for f in FROZEN_ON_RESUME)]
    if frozen:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in frozen)
        raise ConfigError(
            f"resume={run} cannot change {listed}: its checkpoint was trained with the old "
            "values; drop those overrides, or start a new run to train a different model.")
    step = step_of(checkpoint)
    if step >= cfg.trainer.max_steps:
        raise NothingToDo(
            f"Run {run} is already at step {step} and trainer.max_steps is "
            f"{cfg.trainer.max_steps}: nothing to do; pass trainer.max_steps=N with N > {step} "
            "to train it longer.")
    return Resume(run, checkpoint, step, changes)
