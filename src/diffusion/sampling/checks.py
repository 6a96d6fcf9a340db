"""Checks of the sampling arguments shared by ``DiffusionPipeline``, ``diffusion.sample`` and
``diffusion.evaluate``.

One place, so a bad value gives the same one-sentence ``ValueError`` from the Python API and
from both command lines, and the command lines can reject it before they load a model, train
a feature network or sample for minutes. Every message names the key as the user types it
and says what is allowed.
"""

from __future__ import annotations

import numbers
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.runtime import distributed as dist
from diffusion.commands.launcher import USER_ERRORS, fail
from diffusion.config.paths import CONF_DIR
from diffusion.schedulers import NoiseScheduler
from diffusion.schedulers.base import TIMESTEP_SPACINGS

SAMPLERS = NoiseScheduler.SAMPLERS  # name -> scheduler class, as ``sampler=`` spells it
SAMPLER_PRESETS = NoiseScheduler.SAMPLER_PRESETS  # name -> the options the name sets
MOVED_KEYS = {"steps": "sampler.steps", "eta": "sampler.eta",
              "timestep_spacing": "sampler.timestep_spacing",
              "trainer.sampler": "sampler=<name>", "trainer.sample_steps": "sampler.steps",
              "trainer.sample_spacing": "sampler.timestep_spacing",
              "trainer.loss": "objective.loss", "trainer.huber_delta": "objective.huber_delta"}
"""Keys of earlier versions and where the ``sampler`` and ``objective`` config groups keep
them now."""
RUN_REQUIRED = ("run= is required: pass the run folder diffusion.train printed, "
                "e.g. run=runs/<name>/<date>_<time>.")


def moved_key_message(key: str) -> str:
    """The one sentence for a key of ``MOVED_KEYS`` typed in its old place."""
    if MOVED_KEYS[key].startswith("objective."):
        return (f"{key} is now {MOVED_KEYS[key]}: the training objective is a config group, "
                f"e.g. objective=v_minsnr objective.loss=l1 (conf/objective/ holds one file "
                f"per objective).")
    return (f"{key} is now {MOVED_KEYS[key]}: the sampler is a config group, e.g. "
            f"sampler=ddim sampler.steps=50 (conf/sampler/ holds one file per sampler).")


def is_int(value: Any) -> bool:
    """An integer (numpy's too), but not a bool: ``steps=true`` is a mistake, not 1 step."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(key: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools and floats are rejected, not truncated."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}; got {value!r}.")
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false; got {value!r}.")
    return value


def check_steps(steps: Any, num_train_timesteps: int, key: str = "steps") -> int:
    """A reverse-step count: 1 to the training T (0 used to mean all T steps, silently)."""
    if not is_int(steps) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"{key} must be an integer from 1 to {num_train_timesteps} (the "
                         f"model's num_train_timesteps); got {steps!r}.")
    return steps


def check_sampling(sampler: Any, steps: Any, eta: Any, num_train_timesteps: int,
                   n: Any = None, batch_size: Any = None, prefix: str = "",
                   timestep_spacing: Any = None, spacing_key: str = "timestep_spacing") -> None:
    """Every argument of one sampling protocol (``n``/``batch_size`` when given).

    ``eta`` is DDIM's: the other samplers would ignore it, so a non-zero eta with them is an
    error rather than a setting that silently does nothing. ``prefix`` (``metrics.``) names
    the keys as the config spells them.
    """
    if isinstance(sampler, NoiseScheduler):  # a scheduler object brings its own settings
        sampler, eta = type(sampler), 0
    elif sampler not in SAMPLERS:
        raise ValueError(f"{prefix}sampler must be one of {', '.join(sorted(SAMPLERS))}; "
                         f"got {sampler!r}.")
    for one in steps if isinstance(steps, list | tuple) else [steps]:
        check_steps(one, num_train_timesteps, key=f"{prefix}steps")
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 <= eta <= 1:
        raise ValueError(f"{prefix}eta must be a number in [0, 1] (0: deterministic DDIM); "
                         f"got {eta!r}.")
    if eta and "eta" not in SAMPLERS[sampler].config_keys():
        takes = "|".join(sorted(name for name, cls in SAMPLERS.items()
                                if "eta" in cls.config_keys()))
        raise ValueError(f"{prefix}eta only applies to sampler={takes}; got eta={eta} with "
                         f"sampler={sampler}: set eta=0 or sampler={takes}.")
    if timestep_spacing is not None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"{prefix}{spacing_key} must be one of "
                             f"{', '.join(TIMESTEP_SPACINGS)} (or null: the training "
                             f"scheduler's); got {timestep_spacing!r}.")
    if n is not None:
        check_int(f"{prefix}n", n)
    if batch_size is not None:
        check_int(f"{prefix}batch_size", batch_size)


def is_stochastic(sampler: str, eta: Any = 0.0) -> bool:
    """Whether the sampler named ``sampler`` draws noise at its steps (ddpm, euler_a,
    dpmpp_2m_sde, ddim with eta > 0), so that its images depend on how a draw is batched."""
    if sampler not in SAMPLERS:
        return bool(eta)
    cls, options = SAMPLERS[sampler], dict(SAMPLER_PRESETS[sampler])
    if "eta" in cls.config_keys():
        options["eta"] = eta
    return cls(**options).stochastic


def balanced_labels(n: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... for ``n`` samples of a K-class model (None when
    unconditional): every class equally often, as FID and the trainer's grids sample."""
    return None if num_classes is None else torch.arange(n) % num_classes


def check_labels(y: Any, n: int, num_classes: int | None, key: str = "y") -> torch.Tensor | None:
    """``y`` as a (n,) long tensor of class labels, balanced when None for a conditional model.

    Index ``num_classes`` is the model's internal null label and nothing trains it, so it
    is out of range here like any other; an unconditional model takes no labels at all.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError(f"{key} was given but the model is unconditional "
                             f"(num_classes=None): leave {key} out.")
        return None
    if y is None:
        return balanced_labels(n, num_classes)
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{key} must be integer class labels in [0, {num_classes - 1}]; "
                         f"got a {y.dtype} tensor.")
    if y.shape != (n,):
        raise ValueError(f"{key} must hold one label per sample, shape ({n},); "
                         f"got shape {tuple(y.shape)}.")
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise ValueError(f"{key} must be class labels in [0, {num_classes - 1}]; "
                         f"got {int(bad[0])}.")
    return y.long()


def labels_option(labels: Any, n: int, num_classes: int | None) -> torch.Tensor | None:
    """The ``labels`` option of ``diffusion.sample``: null (balanced 0..K-1, or none for an
    unconditional run), ``all`` (balanced 0..K-1), one label, or a list of labels repeated to
    fill ``n``."""
    if labels is None or labels == "all":
        if labels == "all" and num_classes is None:
            raise ValueError("labels=all needs a class-conditional run or a classifier; this "
                             "run is unconditional: leave labels out.")
        return check_labels(None, n, num_classes, key="labels")
    values = [labels] if not isinstance(labels, Iterable) or isinstance(labels, str) \
        else list(labels)
    if not values or not all(is_int(v) for v in values):
        raise ValueError(f"labels must be null, all, a class label or a list of them, e.g. "
                         f"labels=3 or labels=[0,1,2]; got {labels!r}.")
    if num_classes is None:
        return check_labels(values, n, None, key="labels")
    return check_labels(torch.tensor(values).repeat(-(-n // len(values)))[:n], n, num_classes,
                        key="labels")


# ---------------------------------------------------------------------------------------------
# Command-line configs
# ---------------------------------------------------------------------------------------------


def known_keys(config_name: str) -> dict[str, set[str] | None]:
    """The keys ``conf/<config_name>.yaml`` defines: {key: None} for a plain key,
    {group: keys of any of its options} for a config group from the defaults list."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml"))
    keys: dict[str, set[str] | None] = {k: None for k in conf if k not in ("defaults", "hydra")}
    for group in default_choices(config_name):
        keys[group] = {k for option in group_options(group) for k in option_keys(group, option)}
    return keys


def default_choices(config_name: str) -> dict[str, str | None]:
    """{group: its default option} of ``conf/<config_name>.yaml``'s defaults list."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml"))
    return {group: option for entry in conf.get("defaults", []) if isinstance(entry, dict)
            for group, option in entry.items()
            if "/" not in group and (CONF_DIR / group).is_dir()}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def option_keys(group: str, option: str) -> set[str]:
    return set(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))


def _check_key(key: str, sub: str | None, known: dict[str, set[str] | None],
               config_name: str, option: str | None = None) -> None:
    if key not in known:
        if key in MOVED_KEYS:
            raise ValueError(moved_key_message(key))
        raise ValueError(f"{key} is not a diffusion.{config_name} option: use one of "
                         f"{', '.join(sorted(known))}.")
    keys = option_keys(key, option) if option is not None else known[key]
    if sub is not None and keys is not None and sub not in keys:
        what = f"an option of {key}={option}" if option is not None else f"a {key} option"
        raise ValueError(f"{key}.{sub} is not {what}: use one of {', '.join(sorted(keys))}.")


def check_overrides(argv: list[str], config_name: str) -> None:
    """Plain ``key=value`` arguments name known keys, and a group's option exists and has
    the keys set below it (``sampler=euler sampler.eta=1`` is refused); checked before
    Hydra, whose own errors are several lines ending in advice about stack traces."""
    known = known_keys(config_name)
    choices = default_choices(config_name)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in choices:
            if value not in group_options(key):
                raise ValueError(f"{key} must be one of {', '.join(group_options(key))}; "
                                 f"got {value!r}.")
            choices[key] = value
    for arg in argv:
        key, eq, _ = arg.partition("=")
        if not eq or key.startswith(("+", "~", "-", "hydra")) or "@" in key:
            continue  # Hydra's own syntax (+add, ~delete, flags, packages) and hydra.*
        top, _, sub = key.partition(".")
        _check_key(top, sub.partition(".")[0] or None, known, config_name, choices.get(top))


def check_cli_config(cfg, config_name: str) -> None:
    """``run=`` is set and every key is one ``conf/<config_name>.yaml`` knows: Hydra's
    ``+key=value`` adds any key, so a misspelt ``+y=3`` would otherwise be ignored."""
    known = known_keys(config_name)
    for key in cfg:
        _check_key(key, None, known, config_name)
        if known[key] is not None and OmegaConf.is_dict(cfg[key]):
            for sub in cfg[key]:
                _check_key(key, sub, known, config_name)
    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise ValueError(RUN_REQUIRED)


def check_writable(path: str | Path, what: str) -> None:
    """Fail now, before any sampling, if ``path`` (a file to write) cannot be written.

    Creates nothing that stays: the nearest existing folder above ``path`` is probed with a
    temporary file (root passes ``os.access`` everywhere; a real write is the only test that
    holds for every user and file system).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file: {what}.")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, so {path} cannot be written: {what}.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError:
        raise ValueError(f"{folder} is not writable: {what}.") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{path} is not writable: {what}.")


def run_command(config_name: str, work: Callable[[DictConfig], Any],
                rewrite: Callable[[list[str]], list[str]] = list) -> None:
    """The ``main()`` of ``diffusion.sample`` and ``diffusion.evaluate``: check the command
    line's keys against ``conf/<config_name>.yaml``, ``rewrite`` it, compose with Hydra and run
    ``work(cfg)`` (under torchrun, every rank takes its share); a user error ends in one
    sentence and exit status 1."""
    try:
        check_overrides(sys.argv[1:], config_name)
    except ValueError as exc:
        fail(exc)
    sys.argv = [sys.argv[0], *rewrite(sys.argv[1:])]

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        dist.init_from_env()
        try:
            work(cfg)
        except (*USER_ERRORS, ValueError) as exc:
            fail(exc)
        finally:
            dist.shutdown()

    _main()
