"""The sampling arguments' rules, shared by ``DiffusionPipeline``, the editing functions and
the commands that sample (``diffusion.sample``, ``diffusion.evaluate``, ``diffusion.edit``).

One place, so a bad value gives the same one-sentence ``ConfigError`` (a ``ValueError``) from
the Python API and from the command lines, and the command lines can refuse it before they
load a model, train a feature network or sample for minutes.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable
from typing import Any

import torch

from diffusion.checks import check_choice, check_int, check_number, is_int
from diffusion.errors import ConfigError
from diffusion.schedulers import CONTINUOUS_PRESETS, CONTINUOUS_SAMPLERS, NoiseScheduler
from diffusion.schedulers.base import TIMESTEP_SPACINGS, Generators

# name -> sampler class, as ``sampler=`` spells it: the discrete samplers (NoiseScheduler's)
# and the continuous-time ones (schedulers.continuous); live views of both registries
SAMPLERS = ChainMap(NoiseScheduler.SAMPLERS, CONTINUOUS_SAMPLERS)
SAMPLER_PRESETS = ChainMap(NoiseScheduler.SAMPLER_PRESETS, CONTINUOUS_PRESETS)


SCHEDULER_API = ("set_timesteps", "step", "scale_model_input", "init_noise_sigma")
ADAPTIVE_API = ("set_timesteps", "solve", "init_noise_sigma")


def is_scheduler(sampler: Any) -> bool:
    """Whether ``sampler`` is a scheduler object the sampling loop runs as it is: one of ours,
    a continuous-time sampler (``schedulers.score_sde``, ``schedulers.annealed_langevin``), or
    any object with the loop's methods; or an adaptive one (``adaptive = True``) that solves
    with the network itself (``schedulers.adaptive_ode``)."""
    if getattr(sampler, "adaptive", False):  # it solves with the network (AdaptiveODESampler)
        return all(hasattr(sampler, a) for a in ADAPTIVE_API)
    return isinstance(sampler, NoiseScheduler) or all(hasattr(sampler, a) for a in SCHEDULER_API)


def check_sampler(name: Any, key: str = "sampler") -> str:
    """A registered sampler's name."""
    return check_choice(key, name, sorted(SAMPLERS))


def check_steps(steps: Any, num_train_timesteps: int, key: str = "steps") -> int:
    """A reverse-step count: 1 to the training T (0 used to mean all T steps, silently)."""
    return check_int(key, steps, 1, num_train_timesteps,
                     note=" (the model's num_train_timesteps)")


def check_sampling(sampler: Any, steps: Any, eta: Any, num_train_timesteps: int,
                   n: Any = None, batch_size: Any = None, prefix: str = "",
                   timestep_spacing: Any = None, spacing_key: str = "timestep_spacing") -> None:
    """Every argument of one sampling protocol (``n``/``batch_size`` when given).

    ``eta`` is DDIM's: the other samplers would ignore it, so a non-zero eta with them is an
    error rather than a setting that silently does nothing. ``prefix`` (``metrics.``) names
    the keys as the config spells them.
    """
    if is_scheduler(sampler) and not isinstance(sampler, NoiseScheduler):
        check_int(f"{prefix}steps", steps)  # its own set_timesteps checks the rest
        return
    if isinstance(sampler, NoiseScheduler):  # a scheduler object brings its own settings
        sampler, eta = type(sampler), 0
    else:
        check_sampler(sampler, f"{prefix}sampler")
    for one in steps if isinstance(steps, list | tuple) else [steps]:
        check_steps(one, num_train_timesteps, key=f"{prefix}steps")
    check_number(f"{prefix}eta", eta, 0, 1, note=" (0: deterministic DDIM)")
    if eta and "eta" not in SAMPLERS[sampler].config_keys():
        takes = "|".join(sorted(name for name, cls in SAMPLERS.items()
                                if "eta" in cls.config_keys()))
        raise ConfigError(f"{prefix}eta only applies to sampler={takes}; got eta={eta} with "
                         f"sampler={sampler}: set eta=0 or sampler={takes}.")
    if timestep_spacing is not None:
        check_choice(f"{prefix}{spacing_key}", timestep_spacing, TIMESTEP_SPACINGS,
                     note=" (or null: the training scheduler's)")
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
            raise ConfigError(f"{key} was given but the model is unconditional "
                             f"(num_classes=None): leave {key} out.")
        return None
    if y is None:
        return balanced_labels(n, num_classes)
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ConfigError(f"{key} must be integer class labels in [0, {num_classes - 1}]; "
                         f"got a {y.dtype} tensor.")
    if y.shape != (n,):
        raise ConfigError(f"{key} must hold one label per sample, shape ({n},); "
                         f"got shape {tuple(y.shape)}.")
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise ConfigError(f"{key} must be class labels in [0, {num_classes - 1}]; "
                         f"got {int(bad[0])}.")
    return y.long()


def labels_option(labels: Any, n: int, num_classes: int | None) -> torch.Tensor | None:
    """The ``labels`` option of ``diffusion.sample``: null (balanced 0..K-1, or none for an
    unconditional run), ``all`` (balanced 0..K-1), one label, or a list of labels repeated to
    fill ``n``."""
    if labels is None or labels == "all":
        if labels == "all" and num_classes is None:
            raise ConfigError("labels=all needs a class-conditional run or a classifier; this "
                             "run is unconditional: leave labels out.")
        return check_labels(None, n, num_classes, key="labels")
    values = [labels] if not isinstance(labels, Iterable) or isinstance(labels, str) \
        else list(labels)
    if not values or not all(is_int(v) for v in values):
        raise ConfigError(f"labels must be null, all, a class label or a list of them, e.g. "
                         f"labels=3 or labels=[0,1,2]; got {labels!r}.")
    if num_classes is None:
        return check_labels(values, n, None, key="labels")
    return check_labels(torch.tensor(values).repeat(-(-n // len(values)))[:n], n, num_classes,
                        key="labels")


def labels_tag(labels: Any) -> str:
    """The ``labels`` option in a file name: ``""`` for null, ``_labelsall``, ``_labels3``,
    ``_labels0-1-2`` (the first eight, then ``-etc``)."""
    if labels is None:
        return ""
    if labels == "all":
        return "_labelsall"
    values = [labels] if is_int(labels) else list(labels)
    return "_labels" + "-".join(map(str, values[:8])) + ("-etc" if len(values) > 8 else "")


def check_generator(generator: Generators, n: int, key: str = "generator") -> Generators:
    """A ``torch.Generator``, None, or a list of ``n`` of them (one per image, as diffusers)."""
    if isinstance(generator, list | tuple):
        if len(generator) != n or not all(isinstance(g, torch.Generator) for g in generator):
            raise ConfigError(f"{key} must be one torch.Generator or a list of {n} (one per "
                              f"image); got a list of {len(generator)}.")
        return list(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"{key} must be a torch.Generator, a list of them or None; got "
                          f"a {type(generator).__name__}.")
    return generator


def generator_part(generator: Generators, part: slice) -> Generators:
    """The generators of the images in ``part``: a list's slice, else the one generator."""
    return generator[part] if isinstance(generator, list | tuple) else generator
