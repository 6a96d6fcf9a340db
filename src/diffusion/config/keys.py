"""Which keys a command's config knows, checked before Hydra composes it.

Hydra's own errors for an unknown key are several lines ending in advice about stack traces,
and its ``+key=value`` adds any key, so a misspelt ``+y=3`` would be ignored. The keys a
command takes are read from its primary config (``conf/<command>.yaml``) and its groups'
options; an unknown one is refused in one sentence that lists the known ones, an old one
says where it went (``diffusion.config.legacy``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

from diffusion.checks import check_choice
from diffusion.config.legacy import MOVED_KEYS, moved_key_message
from diffusion.config.paths import CONF_DIR
from diffusion.config.sampler import RUN_SAMPLER, run_sampler_option_message
from diffusion.errors import ConfigError
from diffusion.runs.load import RUN_EXAMPLE

LAUNCHER_PLUGINS = {
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}
"""Hydra launchers the project offers as an optional extra: the option of
``hydra/launcher=<option>``, the module its plugin installs and the extra that installs it."""

RUN_REQUIRED = ("run= is required: pass the run folder diffusion.train printed, "
                f"e.g. run={RUN_EXAMPLE}.")


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
            raise ConfigError(moved_key_message(key))
        raise ConfigError(f"{key} is not a diffusion.{config_name} option: use one of "
                         f"{', '.join(sorted(known))}.")
    keys = option_keys(key, option) if option is not None else known[key]
    if sub is not None and keys is not None and sub not in keys:
        if (key, option) == ("sampler", RUN_SAMPLER):
            raise ConfigError(run_sampler_option_message(sub))
        what = f"an option of {key}={option}" if option is not None else f"a {key} option"
        raise ConfigError(f"{key}.{sub} is not {what}: use one of {', '.join(sorted(keys))}.")


def check_overrides(argv: list[str], config_name: str, multirun: bool = False) -> None:
    """Plain ``key=value`` arguments name known keys, and a group's option exists and has
    the keys set below it (``sampler=euler sampler.eta=1`` is refused); checked before
    Hydra, whose own errors are several lines ending in advice about stack traces. In a
    sweep (``multirun``) a group's comma-separated options are checked one by one."""
    check_name_override(argv)
    check_commas(argv, multirun)
    known = known_keys(config_name)
    choices = _choices(argv, config_name, multirun)
    for arg in argv:
        key, eq, _ = arg.partition("=")
        if not eq or key.startswith(("+", "~", "-", "hydra")) or "@" in key:
            continue  # Hydra's own syntax (+add, ~delete, flags, packages) and hydra.*
        top, _, sub = key.partition(".")
        _check_key(top, sub.partition(".")[0] or None, known, config_name, choices.get(top))


def check_commas(argv: list[str], multirun: bool) -> None:
    """A path with a comma in its name (``data.root=/data/a,b``) is a list to Hydra, and two
    jobs to a sweep: when the whole value names something that exists, say to quote it."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        if (not eq or "," not in value or value[:1] in "[{'\""
                or not Path(value).expanduser().exists()):
            continue
        reading = (f"{len(value.split(','))} jobs of a sweep" if multirun
                   else "a list of values")
        raise ConfigError(f"{arg}: the comma in this path makes Hydra read it as {reading}: "
                          f"quote the value, e.g. '{key}=\"{value}\"' (the quotes inside "
                          "the shell's).")


def _choices(argv: list[str], config_name: str, multirun: bool = False
             ) -> dict[str, str | None]:
    """The option each group of ``conf/<config_name>.yaml``'s defaults list takes: its default,
    or the one ``argv`` chooses (checked; in a sweep, each of the comma-separated ones, and
    None for the group, whose keys are then any of its options')."""
    known = (CONF_DIR / f"{config_name}.yaml").is_file()
    choices = default_choices(config_name) if known else {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in choices:
            options = value.split(",") if multirun else [value]
            for option in options:
                check_choice(key, option, group_options(key))
            choices[key] = options[0] if len(options) == 1 else None
    return choices


def check_name_override(overrides: list[str]) -> None:
    """``sampler.name=<x>`` would change the sampler's class but keep the old one's options:
    the group is switched by ``sampler=<x>``."""
    for override in overrides:
        key, eq, value = override.partition("=")
        if eq and key == "sampler.name":
            raise ConfigError(f"sampler.name picks the sampler but not its options: use "
                              f"sampler={value} (the config group) instead of {override}.")


def check_group_key(key: str, overrides: list[str], config_name: str) -> None:
    """For ``group.key`` that Hydra could not set: if ``group`` is a config group whose option
    is one file (no defaults list of its own), the one sentence naming the chosen option and
    its keys (``sampler.eta`` with ``sampler=euler``)."""
    group, _, sub = key.partition(".")
    option = _choices(overrides, config_name).get(group)
    path = CONF_DIR / group / f"{option}.yaml"
    if sub and option and path.is_file() and "defaults" not in OmegaConf.load(path):
        _check_key(group, sub.partition(".")[0], {group: None}, config_name, option)


NAMED_OPTIONS = {"metrics": "fid"}
"""Groups whose composed node names its option (``name``; absent: the value here), so a key
of another option (``metrics.trace`` with FID) is refused by the command's own check."""


def check_cli_config(cfg, config_name: str) -> None:
    """``run=`` is set and every key is one ``conf/<config_name>.yaml`` knows: Hydra's
    ``+key=value`` adds any key, so a misspelt ``+y=3`` would otherwise be ignored."""
    known = known_keys(config_name)
    for key in cfg:
        _check_key(key, None, known, config_name)
        if known[key] is not None and OmegaConf.is_dict(cfg[key]):
            option = None
            if key in NAMED_OPTIONS:  # the node says which option it is: check its keys
                option = cfg[key].get("name") or NAMED_OPTIONS[key]
                option = option if option in group_options(key) else None
            for sub in cfg[key]:
                _check_key(key, sub, known, config_name, option)
    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise ConfigError(RUN_REQUIRED)


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=<option>`` of an optional extra (``LAUNCHER_PLUGINS``) that is not
    installed: one sentence saying which ``pip install`` adds it, before any folder is made
    (Hydra's own error lists its search path and comes after the sweep folder exists)."""
    for arg in argv:
        key, eq, option = arg.lstrip("+").partition("=")
        if not eq or key != "hydra/launcher" or option not in LAUNCHER_PLUGINS:
            continue
        module, extra = LAUNCHER_PLUGINS[option]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # its parent package is missing too
            found = False
        if not found:
            raise ConfigError(f"hydra/launcher={option} needs Hydra's {option.split('_')[0]} "
                              f"launcher plugin ({module}), which is not installed: "
                              f"pip install -e '.[{extra}]'.")
