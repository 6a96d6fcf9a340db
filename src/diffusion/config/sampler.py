"""The ``sampler`` config group read into a ``SamplerSpec``: a group option by name, the
sampler of a training config (also of run folders from before the group), and ``sampler=run``,
the default of the commands that read a trained run: that run's own sampler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.config.paths import CONF_DIR
from diffusion.errors import ConfigError
from diffusion.sampling.checks import check_sampler
from diffusion.sampling.sampler import SamplerSpec, training_sampler_node

RUN_SAMPLER = "run"
"""``sampler=run`` (``conf/sampler/run.yaml``): the sampler the run's training config names
(its grids' and periodic FID's), with ``sampler.steps`` where that is given."""
RUN_SAMPLER_COMMANDS = ("sample", "evaluate", "edit")
"""The commands that read a trained run, and so may take ``sampler=run``."""


def training_sampler(cfg: Mapping[str, Any]) -> SamplerSpec:
    """The sampler of a training config's grids and periodic FID (``SamplerSpec.of_run``:
    also of run folders from before the group); ``sampler=run`` has no run to read here."""
    if (cfg.get("sampler") or {}).get("name") == RUN_SAMPLER:
        raise ConfigError("sampler=run is a trained run's own sampler (for diffusion.sample, "
                          "evaluate and edit); a training run names its grids' sampler, e.g. "
                          "sampler=ddim or sampler=flow_midpoint.")
    return SamplerSpec.of_run(cfg)


def named_sampler(name: str, key: str = "sampler") -> SamplerSpec:
    """The spec ``conf/sampler/<name>.yaml`` states (what ``sampler=<name>`` gives)."""
    check_sampler(name, key)
    return SamplerSpec.from_config(OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml"), key)


def run_sampler_option_message(option: str, name: str | None = None) -> str:
    """The sentence refusing ``sampler.<option>`` under ``sampler=run`` (``name``: the run's
    sampler, where it is known)."""
    own = f"the run's own sampler, {name}," if name else "the run's own sampler,"
    return (f"sampler.{option} is not an option of sampler=run ({own} whose steps alone change "
            f"here): name the sampler to set it, e.g. sampler={name or 'ddim'} "
            f"sampler.{option}=<value>.")


def resolve_run_sampler(cfg: DictConfig, run_cfg: Mapping[str, Any]) -> None:
    """Replace ``sampler=run`` in a command's ``cfg`` by the node of the run's own sampler
    (``run_cfg``: the run folder's config.yaml), keeping ``sampler.steps`` where it is set;
    any other sampler is left as it is. So a flow-matching run samples with its flow sampler,
    a DDPM run with its DPM-Solver, and everything after this reads one ordinary node."""
    if cfg.sampler.get("name") != RUN_SAMPLER:
        return
    extra = sorted(set(cfg.sampler) - {"name", "steps"})
    node = training_sampler_node(run_cfg)
    if extra:
        raise ConfigError(run_sampler_option_message(extra[0], node.get("name")))
    if cfg.sampler.get("steps") is not None:
        node["steps"] = cfg.sampler.steps
    with open_dict(cfg):
        cfg.sampler = OmegaConf.create(node)
