"""Scheduler configs in diffusers' terms: what ``save_pretrained`` writes, what
``from_pretrained`` and ``from_config`` accept from diffusers, and what they refuse.

Our constructor arguments are diffusers' names, with two differences: the cosine schedule is
diffusers' ``squaredcos_cap_v2``, and a schedule's ends may be left unset (None) where diffusers
wants numbers. diffusers' options that ours lack are accepted at the values where they change
nothing (every diffusers config holds them so) and refused at any other value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from diffusion.schedulers.betas import schedule_ends

CONFIG_NAME = "scheduler_config.json"
"""What ``save_pretrained`` writes and ``from_pretrained`` reads, as in diffusers."""
TO_DIFFUSERS_SCHEDULES = {"cosine": "squaredcos_cap_v2"}
FROM_DIFFUSERS_SCHEDULES = {v: k for k, v in TO_DIFFUSERS_SCHEDULES.items()}
DIFFUSERS_ENDS = {"beta_start": 0.0001, "beta_end": 0.02}
"""diffusers' class defaults, written for a schedule that has no ends (it ignores them)."""
DIFFUSERS_NOOPS: dict[str, tuple] = {
    "variance_type": ("fixed_small", None),
    "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,),
    "use_flow_sigmas": (False,), "flow_shift": (1.0,), "use_dynamic_shifting": (False,),
    "time_shift_type": ("exponential",), "timestep_type": ("discrete",),
    "euler_at_final": (False,), "lambda_min_clipped": (-math.inf,), "use_lu_lambdas": (False,),
    "interpolation_type": ("linear",), "sigma_min": (None,), "sigma_max": (None,),
    "final_sigmas_type": ("zero",),
}
"""diffusers' options that ours lack, at the values where they change nothing: a config
that holds them so (every diffusers config does) builds our class; another value is refused."""


_THRESHOLDING = {"thresholding", "dynamic_thresholding_ratio", "sample_max_value"}
DIFFUSERS_LACKS: dict[str, set[str]] = {
    "DDIMScheduler": {"eta"},
    "DPMSolverMultistepScheduler": {"clip_sample", "clip_sample_range"},
    "EulerDiscreteScheduler": {"clip_sample", "clip_sample_range", *_THRESHOLDING},
    "EulerAncestralDiscreteScheduler": {"clip_sample", "clip_sample_range", *_THRESHOLDING},
    "HeunDiscreteScheduler": {"rescale_betas_zero_snr", *_THRESHOLDING},
    "RePaintScheduler": {"clip_sample_range", "prediction_type", "rescale_betas_zero_snr",
                         "set_alpha_to_one", "steps_offset", "timestep_spacing", *_THRESHOLDING},
}
"""Our options that diffusers' class of the same name does not take: left out of the config
written for diffusers where they are at their defaults, so diffusers loads it without a
warning (at another value they are written, and diffusers warns that it ignores them)."""


def _is_noop(key: str, value: Any) -> bool:
    return key in DIFFUSERS_NOOPS and value in DIFFUSERS_NOOPS[key]


def constructor_arguments(class_name: str, keys: Iterable[str], config: Mapping[str, Any],
                          overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of class ``class_name`` (which takes ``keys``) in ``config`` (ours or
    diffusers', any class's) with ``overrides``: diffusers' bookkeeping (``_class_name``, ...)
    and another sampler's own options (a DPM-Solver config's ``solver_order`` read by DDIM)
    are dropped, as diffusers does; a diffusers feature the class lacks
    (``use_exponential_sigmas=True``, ``timestep_type="continuous"``) raises one sentence."""
    merged = {**dict(config), **overrides}
    schedule = merged.get("beta_schedule")
    if schedule is not None:
        merged["beta_schedule"] = schedule = FROM_DIFFUSERS_SCHEDULES.get(schedule, schedule)
    if any(str(key).startswith("_") for key in config) and schedule is not None \
            and schedule_ends(schedule, 1000) == (None, None):
        merged.pop("beta_start", None)  # a saved file's numbers for ends cosine does not have
        merged.pop("beta_end", None)
    keys = set(keys)
    for key, value in merged.items():
        if key not in keys and key in DIFFUSERS_NOOPS and not _is_noop(key, value):
            raise ValueError(f"{class_name} has no option {key} (got {value!r}); drop it, or "
                             "leave it at diffusers' default.")
    return {key: value for key, value in merged.items() if key in keys}


def to_diffusers(config: Mapping[str, Any], class_name: str,
                 defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config`` as diffusers writes one: its class name, its beta schedule names, the
    schedule's ends spelt out (diffusers' defaults where the schedule has none), and without
    the options diffusers' class lacks (``DIFFUSERS_LACKS``) that are at their ``defaults``."""
    defaults = defaults or {}
    config = {key: value for key, value in config.items()
              if not (key in DIFFUSERS_LACKS.get(class_name, ()) and key in defaults
                      and value == defaults[key])}
    schedule = config["beta_schedule"]
    config["beta_schedule"] = TO_DIFFUSERS_SCHEDULES.get(schedule, schedule)
    start, end = schedule_ends(schedule, config["num_train_timesteps"])
    for key, value in (("beta_start", start), ("beta_end", end)):
        if config.get(key) is None:  # diffusers wants a number (cosine ignores it)
            config[key] = value if value is not None else DIFFUSERS_ENDS[key]
    return {"_class_name": class_name, **config}


def read_config(path: str | os.PathLike, subfolder: str | None = None) -> dict[str, Any]:
    """The ``scheduler_config.json`` of a ``save_pretrained`` folder (ours or diffusers')."""
    folder = Path(path) / (subfolder or "")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {folder}: pass the folder that "
                                "save_pretrained wrote (a pipeline's: subfolder='scheduler').")
    return json.loads(file.read_text())


def write_config(config: Mapping[str, Any], save_directory: str | os.PathLike) -> Path:
    """Write ``config`` as ``<save_directory>/scheduler_config.json``."""
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    return path
