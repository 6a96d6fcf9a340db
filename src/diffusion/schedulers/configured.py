"""How a discrete scheduler is named, configured and saved: the sampler registry
(``sampler=name``), the constructor arguments as its ``config``, ``over`` (another sampler over
a run's noise process) and diffusers' ``from_config``/``from_pretrained``/``save_pretrained``.
``NoiseScheduler`` (``schedulers.base``) is the noise process and the reverse step; this is the
part every scheduler class shares without touching the numbers.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from diffusion.schedulers import interop
from diffusion.schedulers.continuous import CONTINUOUS_SAMPLERS


class ConfiguredScheduler:
    """The registry and config half of ``NoiseScheduler``; see the module docstring.
    A subclass sets ``self._config`` (its constructor arguments) in ``__init__``."""

    #: sampler name -> class: ``sampler_name=`` in a subclass statement, or ``register``.
    SAMPLERS: ClassVar[dict[str, type[ConfiguredScheduler]]] = {}
    #: sampler name -> the options that name presets on its class ({} for most).
    SAMPLER_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    _config: dict[str, Any]

    def __init_subclass__(cls, sampler_name: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if sampler_name is not None:
            ConfiguredScheduler.register(sampler_name, cls)

    @staticmethod
    def register(name: str, cls: type[ConfiguredScheduler], **presets: Any) -> None:
        """Make ``sampler=name`` mean ``cls.over(training_scheduler, **presets)``."""
        unknown = set(presets) - cls.config_keys()
        if unknown:
            raise ValueError(f"{cls.__name__} takes no option {', '.join(sorted(unknown))}.")
        ConfiguredScheduler.SAMPLERS[name] = cls
        ConfiguredScheduler.SAMPLER_PRESETS[name] = dict(presets)

    @classmethod
    def config_keys(cls) -> set[str]:
        """Every constructor argument of this class: its own and the noise process's."""
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {name for klass in cls.__mro__ if "__init__" in vars(klass)
                for name, p in inspect.signature(klass.__init__).parameters.items()
                if name != "self" and p.kind in named}

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """Each constructor argument's default, the subclass's where both name one."""
        defaults: dict[str, Any] = {}
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                for name, p in inspect.signature(klass.__init__).parameters.items():
                    if p.default is not inspect.Parameter.empty:
                        defaults.setdefault(name, p.default)
        return defaults

    @classmethod
    def over(cls, scheduler: ConfiguredScheduler, **options: Any) -> ConfiguredScheduler:
        """A ``cls`` sampler over ``scheduler``'s noise process (betas, prediction type,
        clipping): only the reverse step changes; ``options`` set its own arguments."""
        if not isinstance(scheduler, ConfiguredScheduler):
            *names, last = sorted(CONTINUOUS_SAMPLERS)
            raise ValueError(f"{cls.__name__} walks a discrete DDPM noise process; this run's "
                             f"is {type(scheduler).__name__} (continuous time): sample it with "
                             f"sampler={', '.join(names)} or {last}.")
        keys = cls.config_keys()
        return cls.from_config({k: v for k, v in scheduler.config.items() if k in keys},
                               **options)


    # ----------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (a fresh plain dict)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any):
        """Build a scheduler from a ``config`` dict (ours, or a diffusers scheduler's:
        ``DDIMScheduler.from_config(diffusers_scheduler.config)``); ``overrides`` replace
        single entries. See ``schedulers.interop.constructor_arguments``: another sampler's
        options are dropped, as diffusers does; a diffusers feature this class lacks is
        refused rather than ignored."""
        return cls(**interop.constructor_arguments(cls.__name__, cls.config_keys(), config,
                                                   overrides))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None,
                        **overrides: Any):
        """The scheduler a ``save_pretrained`` folder holds (ours or diffusers',
        ``scheduler_config.json``; ``subfolder="scheduler"`` inside a pipeline's folder)."""
        return cls.from_config(interop.read_config(path, subfolder), **overrides)

    def diffusers_config(self) -> dict[str, Any]:
        """The config in diffusers' terms (``schedulers.interop.to_diffusers``), so
        ``diffusers.<Same class>.from_config`` builds the same noise process."""
        return interop.to_diffusers(self._config, type(self).__name__, self.config_defaults())

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:
        """Write ``scheduler_config.json`` (``diffusers_config``) into ``save_directory``:
        what diffusers' and our ``from_pretrained`` read."""
        return interop.write_config(self.diffusers_config(), save_directory)

    save_config = save_pretrained

    @property
    def compatibles(self) -> list[type[ConfiguredScheduler]]:
        """The sampler classes that build over the same config (``from_config``)."""
        return sorted({c for c in self.SAMPLERS.values() if c is not type(self)},
                      key=lambda c: c.__name__)

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

