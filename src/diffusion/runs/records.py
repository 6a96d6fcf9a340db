"""What runs record for others to read: portable paths and a run's ``eval.json``.

Paths as records write them (reports, benchmark JSON) are something anyone can paste: a path
under ``$DIFFUSION_DATA`` or ``$DIFFUSION_RUNS`` is written with the variable, a path under
the current folder relative to it, and any other path as a placeholder (``<data>``,
``<runs>``, ...), never as a folder of the machine that wrote the record. ``eval.json``
holds a run's evaluations keyed by their whole protocol (``entry_key``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from pathlib import Path

from diffusion.errors import RunError
from diffusion.runtime.files import write_atomic
from diffusion.sampling.checks import is_stochastic

ENV_ROOTS = ("DIFFUSION_DATA", "DIFFUSION_RUNS")

# the placeholder of a path outside the current folder and the variables, by the setting's
# last key (``paths.data_dir`` -> ``data_dir``)
PLACEHOLDERS = {"data_dir": "<data>", "root": "<data>", "runs_dir": "<runs>", "run": "<runs>",
                "sweep": "<runs>", "out": "<out>"}


def portable_path(path: str | os.PathLike, placeholder: str = "<path>") -> str:
    """``path`` as ``$DIFFUSION_DATA[/...]`` or ``$DIFFUSION_RUNS[/...]`` when under that
    variable's folder, relative when under the current folder, else ``placeholder``."""
    full = Path(os.path.abspath(os.path.expanduser(path)))
    for var in ENV_ROOTS:
        root = os.environ.get(var)
        if root and full.is_relative_to(os.path.abspath(root)):
            rest = full.relative_to(os.path.abspath(root)).as_posix()
            return f"${var}" if rest == "." else f"${var}/{rest}"
    if full.is_relative_to(Path.cwd()):
        return full.relative_to(Path.cwd()).as_posix()
    return placeholder


def _is_path(value: str) -> bool:
    return os.path.isabs(value) or value.startswith(("~", "./", "../"))


def portable_value(key: str, value):
    """A setting's value, through ``portable_path`` if it is a path (absolute, or starting
    with ``~``, ``./`` or ``../``), with the placeholder of its key."""
    if not isinstance(value, str) or not _is_path(value):
        return value
    return portable_path(value, PLACEHOLDERS.get(key.rpartition(".")[2], "<path>"))


def portable_arg(arg: str) -> str:
    """A command-line word; in a ``key=value`` override, a path value is made portable."""
    key, sep, value = arg.partition("=")
    return f"{key}={portable_value(key, value)}" if sep else arg


def shell_word(arg: str) -> str:
    """``arg`` quoted for a shell, leaving a value that starts with ``$DIFFUSION_DATA`` or
    ``$DIFFUSION_RUNS`` to be expanded."""
    key, sep, value = arg.partition("=")
    for var in ENV_ROOTS:
        if sep and (value == f"${var}" or value.startswith(f"${var}/")):
            rest = value[len(var) + 1:]
            return shlex.quote(f"{key}=") + f"${var}" + (shlex.quote(rest) if rest else "")
    return shlex.quote(arg)


def cpu_model() -> str:
    """The CPU's model name as the system reports it (``/proc/cpuinfo``), for records that
    state the machine as a fact."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


# ---- eval.json: a run's evaluations, keyed by their whole protocol -------------------------

#: What makes two evaluations of a run comparable; an eval.json key holds all of it.
PROTOCOL = ("sampler", "steps", "n", "eta", "timestep_spacing", "sampler_options", "batch_size",
            "seed", "checkpoint", "step", "feature_id", "reference_n", "guidance_scale",
            "guidance_rescale", "classifier", "classifier_scale", "upsample", "low_res_level",
            "control_image", "control_scale")
#: Parts of the protocol that an entry may lack: older entries have no timestep_spacing, and
#: sampler_options (the sampler's options changed from its defaults) is there only when set.
OPTIONAL = ("timestep_spacing", "sampler_options")
#: The guidance settings: part of the key where they are set (not None).
GUIDANCE = ("guidance_scale", "guidance_rescale", "classifier", "classifier_scale")
#: A cascade's stages and sampling level, a ControlNet's controls and scale: part of the key of
#: those runs' entries alone.
CASCADE = ("upsample", "low_res_level", "control_image", "control_scale")


def entry_key(entry: dict) -> str:
    """``sampler=ddim steps=50 n=10000 eta=0.0 seed=0 checkpoint=... step=... feature_id=...
    reference_n=...``: the whole protocol, so evaluations that differ in any part of it
    (eta, checkpoint, seed, ...) are kept side by side instead of overwriting each other.
    ``batch_size`` is part of it only for stochastic samplers (ddpm, euler_a, dpmpp_2m_sde,
    ddim with eta > 0), whose step noise is drawn batch by batch; a deterministic sampler
    ignores it. The guidance settings are part of it where they are set."""
    stochastic = is_stochastic(entry["sampler"], entry["eta"])
    return " ".join(f"{k}={entry.get(k)}" for k in PROTOCOL
                    if (k != "batch_size" or stochastic) and (k not in OPTIONAL or k in entry)
                    and (k not in GUIDANCE or entry.get(k) is not None)
                    and (k not in CASCADE or k in entry))


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path`` (a run's status, data or summary record); a damaged one
    is one sentence naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise RunError(f"{path} is damaged (not the JSON record it should be): restore it "
                       "from a copy, or move it aside.")
    return record


def read_eval(run: str | Path) -> dict[str, dict]:
    """The entries of ``<run>/eval.json`` ({} when the run was never evaluated); entries
    written before keys held the whole protocol keep their ``<sampler>-<steps>-n<n>`` key."""
    path = Path(run) / "eval.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        entries = None
    if not isinstance(entries, dict):
        raise RunError(f"{path} is damaged (not the JSON of a run's evaluations): move it "
                       "aside (its results are lost) or restore it from a copy, then evaluate "
                       "again.")
    return entries


def write_eval(run: str | Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``<run>/eval.json`` (same key: the newer result wins)."""
    path = Path(run) / "eval.json"
    merged = {**read_eval(run), **entries}
    return write_atomic(path, json.dumps({"entries": dict(sorted(merged.items()))}, indent=2)
                        + "\n", "free space on the run folder's disk, then run again")


def plot_entries(entries: list[dict], current: dict) -> list[dict]:
    """The entries one FID-vs-steps plot can show beside ``current``: the same checkpoint
    and feature network, and for each (sampler, n, steps) only the newest, so results that
    differ in eta or seed do not zigzag along one line."""
    same = ("checkpoint", "step", "feature_id", *GUIDANCE)
    newest: dict[tuple, dict] = {}
    for e in sorted(entries, key=lambda e: e.get("time", "")):
        if all(e.get(k) == current.get(k) for k in same):
            newest[(e["sampler"], e["n"], e["steps"])] = e
    return list(newest.values())
