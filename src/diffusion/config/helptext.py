"""What a command's ``--help`` lists below its examples: the options of its own config file
(``conf/<command>.yaml``), with their defaults and comments as written there, and the config
groups its defaults list takes, each with its default and the options to choose from.

Both are read from the files themselves, so the help cannot drift from the configs. The
template ``conf/hydra/help/command.yaml`` (which every command's help extends) asks for them as
``${command_help:<config name>}``; ``register`` makes that resolver known
(``diffusion.commands.launcher.launch`` calls it).
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from diffusion.config.keys import group_options
from diffusion.config.paths import CONF_DIR

SKIPPED_BLOCKS = ("defaults", "hydra")
"""Top-level keys of a command's config that are not its options."""

_DEFAULT = re.compile(r"^\s*-\s*([\w/]+)\s*:\s*([\w.]+)\s*(?:#\s*(.*))?$")
"""One ``- group: option  # comment`` entry of a defaults list."""


def _is_key(line: str) -> bool:
    return bool(line) and not line[0].isspace() and not line.startswith("#")


def _blocks(config_name: str) -> tuple[list[str], list[str]]:
    """The lines of ``conf/<config_name>.yaml``: (its options, its defaults list), without the
    comment block it opens with and without the ``hydra`` block."""
    lines = (CONF_DIR / f"{config_name}.yaml").read_text().splitlines()
    options: list[str] = []
    defaults: list[str] = []
    block: str | None = "header"
    for line in lines:
        if _is_key(line):
            block = line.split(":", 1)[0].strip()
        elif block == "header" and line.startswith("#"):
            continue
        elif line.startswith("#"):
            block = None  # a comment at the margin opens the next option
        if block == "defaults":
            defaults.append(line)
        elif block not in SKIPPED_BLOCKS and block != "header":
            options.append(line)
    return options, defaults


def options_text(config_name: str) -> str:
    """The command's own options, as its config file writes them."""
    options = "\n".join(_blocks(config_name)[0]).strip("\n")
    return "\n".join(f"  {line}" if line else "" for line in options.splitlines())


def groups_text(config_name: str) -> str:
    """One line per config group of the command's defaults list: ``group=default`` and the
    options there are, and the comment the defaults list gives it."""
    rows = []
    for line in _blocks(config_name)[1]:
        match = _DEFAULT.match(line)
        if (match is None or match.group(1) in SKIPPED_BLOCKS
                or not (CONF_DIR / match.group(1)).is_dir()):
            continue  # _self_, hydra's settings, override hydra/...
        group, default, comment = match.groups()
        choice = f"{group}={default}" if default != "null" else f"{group}=<none>"
        rows.append((choice, ", ".join(group_options(group)), comment))
    if not rows:
        return ""
    width = max(len(choice) for choice, _, _ in rows)
    return "\n".join(f"  {choice:<{width}}  options: {options}"
                     + (f"  # {comment}" if comment else "") for choice, options, comment in rows)


def command_help(config_name: str) -> str:
    """The options and the config groups of ``conf/<config_name>.yaml``, under a heading
    each (nothing for a config that is not the package's), with every ``$`` doubled: Hydra
    fills the help template in with ``string.Template``, whose ``$$`` is one ``$``."""
    if not (CONF_DIR / f"{config_name}.yaml").is_file():  # --config-name of your own
        return ""
    text = (f"== Options (key=value; the defaults of conf/{config_name}.yaml) ==\n"
            f"{options_text(config_name)}\n")
    groups = groups_text(config_name)
    if groups:
        text += f"\n== Config groups (group=option) ==\n{groups}\n"
    return text.replace("$", "$$")


def register() -> None:
    """Make ``${command_help:<config name>}`` known to OmegaConf (once)."""
    if not OmegaConf.has_resolver("command_help"):
        OmegaConf.register_new_resolver("command_help", command_help)
