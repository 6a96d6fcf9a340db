"""The options of the commands that read a trained run (``diffusion.sample``,
``diffusion.evaluate``, ``diffusion.edit``), each checked before any model is loaded.

What they share is checked once, in ``check_run_options``: every key is one the command knows,
``run=`` is a run folder, the sampler and its steps fit the run's noise process, the device and
precision exist, ``compile`` is a mode. Each command's own keys follow in its function here;
only where the results go (file names, writability) is left to the command. The rules
themselves are ``diffusion.checks``'s, so every sentence is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_bool, check_choice, check_int, check_number
from diffusion.config.build import build_scheduler
from diffusion.config.guidance import GuidanceOptions, check_guidance_options
from diffusion.config.keys import check_cli_config
from diffusion.config.metrics import check_metrics, is_nll
from diffusion.config.paths import CONF_DIR
from diffusion.config.runs import run_config
from diffusion.config.sampler import resolve_run_sampler
from diffusion.editing.img2img import check_strength
from diffusion.errors import ConfigError
from diffusion.processes.base import Process
from diffusion.runtime.device import resolve_device, resolve_precision
from diffusion.sampling.checks import SAMPLERS, labels_option
from diffusion.sampling.pipeline import compile_mode
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers.betas import BETA_SCHEDULES
from diffusion.training.autoencoder import LOSSES as AUTOENCODER_LOSSES

EDIT_TASKS = ("img2img", "inpaint", "invert", "interpolate")
TASK_KEYS = {  # the settings each task's images depend on, beyond the sampler's
    "img2img": ("samples", "strength"),
    "inpaint": ("samples", "mask", "jump_length", "jump_n_sample"),
    "invert": ("fixed_point",),
    "interpolate": ("frames", "fixed_point"),
}


@dataclass(frozen=True)
class RunOptions:
    """What every run-reading command has checked: the run's config, the sampler, its step
    counts (one, except for evaluate) and the run's number of training timesteps."""

    run_cfg: DictConfig
    spec: SamplerSpec
    steps: list[int]
    num_train_timesteps: int


def check_run_options(cfg: DictConfig, command: str, several_steps: bool = False,
                      samples: bool = True, **counts: int) -> RunOptions:
    """The options every command that reads ``run=`` shares; ``counts`` (``n``,
    ``batch_size``) are integers >= 1 checked with the sampler. ``samples=False``: the
    command draws no samples (``evaluate metrics=nll``), so the sampler is not checked
    against the run."""
    check_cli_config(cfg, command)
    run_cfg = run_config(cfg.run)
    resolve_run_sampler(cfg, run_cfg)
    spec = SamplerSpec.from_config(cfg.sampler)
    if not several_steps:
        spec.one_step_count(f"diffusion.{command}")
    scheduler = build_scheduler(run_cfg)
    num_train_timesteps = scheduler.num_train_timesteps
    steps = spec.step_counts(num_train_timesteps)
    if not steps:
        raise ConfigError("sampler.steps must be one or more step counts, e.g. "
                          "sampler.steps=50 or sampler.steps=10,20,50; got none.")
    if samples:
        spec.check(num_train_timesteps, scheduler=scheduler, **counts)
    else:
        for name, value in counts.items():
            check_int(name, value)
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    if cfg.get("compile"):
        compile_mode(cfg.compile)
    return RunOptions(run_cfg, spec, steps, num_train_timesteps)


def check_sample_options(cfg: DictConfig) -> tuple[RunOptions, GuidanceOptions,
                                                   torch.Tensor | None]:
    """``diffusion.sample``'s options: (the shared ones, the guidance, the labels)."""
    run = check_run_options(cfg, "sample", n=cfg.n, batch_size=cfg.batch_size)
    guidance = check_guidance_options(cfg, run.run_cfg)
    labels = labels_option(cfg.labels, cfg.n, guidance.label_classes)
    check_int("seed", cfg.seed, minimum=None)
    check_int("chain_frames", cfg.chain_frames, minimum=2)
    check_int("chain_rows", cfg.chain_rows)
    for key in ("chain", "save_tensors"):
        check_bool(key, cfg[key])
    return run, guidance, labels


def check_evaluate_options(cfg: DictConfig) -> tuple[RunOptions, GuidanceOptions]:
    """``diffusion.evaluate``'s options: (the shared ones, the guidance, scales swept)."""
    run = check_run_options(cfg, "evaluate", several_steps=True, samples=not is_nll(cfg.metrics),
                            batch_size=cfg.batch_size)
    check_int("n", cfg.n, minimum=2, note=" (images per FID)")
    check_metrics(cfg.metrics)
    guidance = check_guidance_options(cfg, run.run_cfg, allow_lists=True)
    check_bool("plot", cfg.plot)
    return run, guidance


def check_edit_options(cfg: DictConfig) -> RunOptions:
    """``diffusion.edit``'s options (its inputs and mask are files, read by the command)."""
    run = check_run_options(cfg, "edit")
    check_choice("task", cfg.task, EDIT_TASKS)
    check_task_sampler(cfg.task, run.spec,
                       continuous=isinstance(build_scheduler(run.run_cfg), Process))
    defaults = OmegaConf.load(CONF_DIR / "edit.yaml")
    for task, keys in TASK_KEYS.items():
        for key in set(keys) - set(TASK_KEYS[cfg.task]):
            if cfg[key] != defaults[key]:
                raise ConfigError(f"{key} applies to task={task}, and task={cfg.task} does not "
                                  f"read it: drop {key}={cfg[key]}.")
    for key in ("n", "samples", "jump_length", "jump_n_sample", "batch_size"):
        check_int(key, cfg[key])
    check_int("start", cfg.start, minimum=0)
    check_int("fixed_point", cfg.fixed_point, minimum=0)
    check_int("frames", cfg.frames, minimum=2)
    check_strength(cfg.strength)
    check_bool("save_tensors", cfg.save_tensors)
    check_int("seed", cfg.seed, minimum=None)
    return run


def check_task_sampler(task: str, spec: SamplerSpec, continuous: bool = False) -> None:
    """The samplers a task runs with: img2img any; RePaint's steps are DDIM (with its eta) or
    DDPM; inversion and its interpolation are deterministic DDIM. A run over a continuous
    process inpaints with any sampler that keeps a chain of states (Song et al.'s
    replacement), and inverts along the velocity ODE (flow_euler); img2img is discrete only."""
    if continuous:
        chain = sorted(name for name, cls in SAMPLERS.items() if hasattr(cls, "known_state"))
        if task == "inpaint" and spec.name not in chain:
            raise ConfigError(f"inpaint of a continuous-time run replaces the known pixels at "
                              f"each state of the chain: use sampler={'|'.join(chain)}; got "
                              f"sampler={spec.name}.")
        if task in ("invert", "interpolate") and spec.name != "flow_euler":
            raise ConfigError(f"{task} of a continuous-time run follows its ODE in velocity "
                              f"form: use sampler=flow_euler; got sampler={spec.name}.")
        if task == "img2img":
            raise ConfigError("img2img starts a discrete sampler part-way; this run's process "
                              "is continuous: use task=inpaint or task=invert.")
        return
    if task == "inpaint" and spec.name not in ("ddim", "ddpm"):
        raise ConfigError(f"inpaint runs RePaint, whose steps are DDIM (sampler=ddim, with "
                          f"sampler.eta) or DDPM (sampler=ddpm); got sampler={spec.name}.")
    if task in ("invert", "interpolate") and (spec.name != "ddim" or spec.eta != 0):
        raise ConfigError(f"{task} runs deterministic DDIM: use sampler=ddim with "
                          f"sampler.eta=0; got sampler={spec.name} with eta={spec.eta}.")


def check_classifier_options(cfg: DictConfig) -> None:
    """``diffusion.train_classifier``'s plain settings, before any data is read or weights
    allocated."""
    if cfg.data.get("num_classes") is None:
        raise ConfigError(f"diffusion.train_classifier needs labelled data, and data "
                          f"{cfg.data.name} has no classes (an image folder is labelled by one "
                          "subfolder per class): label the images or pick a labelled dataset.")
    for key, minimum in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("eval_every", 0),
                         ("eval_n", 1), ("noise_levels", 1)):
        check_int(key, cfg[key], minimum=minimum)
    for key in ("lr", "weight_decay"):
        check_number(key, cfg[key], minimum=0)
    check_int("seed", cfg.seed, minimum=None)
    check_int("noise_levels", cfg.noise_levels, maximum=cfg.scheduler.num_train_timesteps,
              note=" (scheduler.num_train_timesteps)")


def check_autoencoder_options(cfg: DictConfig) -> None:
    """``diffusion.train_autoencoder``'s plain settings, before any data is read or weights
    allocated."""
    for key, minimum in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("eval_every", 0),
                         ("eval_n", 1), ("sample_n", 1), ("keep_last", 0), ("disc_start", 0)):
        check_int(key, cfg[key], minimum=minimum)
    for key in ("lr", "kl_weight", "disc_weight", "grad_clip"):
        check_number(key, cfg[key], minimum=0)
    check_number("ema_decay", cfg.ema_decay, minimum=0, below=1)
    check_choice("loss", cfg.loss, AUTOENCODER_LOSSES)
    check_bool("rfid", cfg.rfid)
    check_bool("progress", cfg.progress)
    check_int("seed", cfg.seed, minimum=None)


FORWARD_KEYS = ("schedules", "num_train_timesteps", "images", "columns", "split", "seed")
"""The settings only the forward-process figure of ``diffusion.visualize`` reads."""


def _set_keys(overrides: list[str]) -> list[str]:
    """The keys a command line set (``data.root=x`` -> ``data.root``; ``data=x`` -> ``data``)."""
    return [o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o]


def check_visualize_options(cfg: DictConfig, overrides: list[str]) -> None:
    """``diffusion.visualize``'s settings, before any data is read; ``overrides`` (the command
    line) tells which were set, so a setting the chosen figure does not read is refused."""
    figure = cfg.figure
    check_bool("wandb", cfg.wandb)
    keys = _set_keys(overrides)
    if figure != "forward":
        unused = [k for k in keys if k.split(".")[0] in (*FORWARD_KEYS, "data")]
        if unused:
            raise ConfigError(f"{unused[0]} only applies to the forward figure, and "
                              f"python -m diffusion.visualize {figure} draws the run's records: "
                              "drop it.")
        return
    if cfg.run and any(k.split(".")[0] == "data" for k in keys):
        raise ConfigError("run= draws the forward process on the run's own data, so data "
                          "settings do not apply: drop them, or drop run=.")
    schedules = cfg.schedules
    if not OmegaConf.is_list(schedules) or not schedules:
        raise ConfigError(f"schedules must be a list of beta schedules, e.g. "
                          f"schedules=[linear,cosine]; got {schedules!r}.")
    for name in schedules:
        check_choice("schedules", name, sorted(BETA_SCHEDULES))
    steps = check_int("num_train_timesteps", cfg.num_train_timesteps, minimum=2)
    check_int("images", cfg.images, maximum=64)
    check_int("columns", cfg.columns, minimum=2, maximum=min(steps, 64),
              note=f" (at most num_train_timesteps, {steps}, and 64 in a row)")
    check_int("seed", cfg.seed, minimum=None)


def check_report_options(cfg: DictConfig) -> list:
    """``diffusion.report``'s settings: the sweep folders (a non-empty list of existing
    folders, returned as a list) and the title."""
    sweeps = list(cfg.sweep) if OmegaConf.is_list(cfg.sweep) else [cfg.sweep]
    if not sweeps or any(s in (None, "") for s in sweeps):
        raise ConfigError("sweep= names no folder: pass the multirun folder that diffusion.train "
                          "-m printed (sweep=runs/multirun/<date>_<time>), or a list of run "
                          "folders (sweep=[a,b]).")
    if cfg.title is not None and not isinstance(cfg.title, str):
        raise ConfigError(f"title must be text; got {cfg.title!r} (quote it: "
                          f"'title=\"{cfg.title}\"').")
    return sweeps
