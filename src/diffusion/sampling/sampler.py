"""A sampler as the ``sampler`` config group states it (``conf/sampler/<name>.yaml``).

Every option of the group holds the registered sampler ``name``, its ``steps``, its
``timestep_spacing`` and the sampler's own options (DDIM's ``eta``, DPM-Solver's
``solver_order`` and ``algorithm_type``, ``use_karras_sigmas``, ...), so that

    python -m diffusion.sample run=<run> sampler=dpmpp_2m sampler.steps=10
    python -m diffusion.evaluate run=<run> sampler=heun sampler.steps=10,20
    python -m diffusion.train experiment=mnist_cpu sampler=euler_a sampler.steps=25

all read one description. ``SamplerSpec.build`` turns it into a scheduler over a run's
training scheduler: the beta schedule, prediction type and clipping carry over, only the
reverse step and the options above change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.sampling.checks import (
    SAMPLER_PRESETS,
    SAMPLERS,
    check_sampler,
    check_sampling,
    is_scheduler,
)
from diffusion.schedulers import NoiseScheduler

GENERIC_KEYS = ("name", "steps", "timestep_spacing")
"""Keys of every ``conf/sampler/*.yaml``; the others are options of the sampler's class."""

OLD_TRAINER_SAMPLER_KEYS = {"sampler": "name", "sample_steps": "steps",
                            "sample_spacing": "timestep_spacing"}
"""``trainer.*`` sampling keys of run folders from before the ``sampler`` group, and theirs."""


def make_sampler(train_scheduler: NoiseScheduler, sampler: str | NoiseScheduler,
                 eta: float = 0.0, timestep_spacing: str | None = None,
                 **options) -> NoiseScheduler:
    """The scheduler that walks the reverse process: ``sampler`` itself when it is a scheduler
    object, else the class named ``sampler`` over the training noise schedule (its betas,
    prediction type and clipping; only the reverse-step algorithm changes), with the options
    the name presets (``dpmpp_3m``: ``solver_order=3``) updated by ``options``
    (``use_karras_sigmas=True``, say), ``eta`` where that sampler takes one, and
    ``timestep_spacing`` (None: the training scheduler's)."""
    if is_scheduler(sampler):
        return sampler  # with its own timestep_spacing
    cls, options = SAMPLERS[sampler], {**SAMPLER_PRESETS[sampler], **options}
    if "eta" in cls.config_keys():
        options["eta"] = eta
    if timestep_spacing is not None and "timestep_spacing" in cls.config_keys():
        options["timestep_spacing"] = timestep_spacing
    return cls.over(train_scheduler, **options)


SAMPLING_OPTIONS = frozenset({"thresholding", "dynamic_thresholding_ratio", "sample_max_value"})
"""Arguments of every scheduler that change only how x_0 is used at sampling time, so a
sampler may set them over a trained run's noise process."""


def sampler_options(name: str) -> set[str]:
    """The options ``sampler.<option>`` may set for sampler ``name``: its class's own
    constructor arguments and ``SAMPLING_OPTIONS``, not the noise process's (those come from
    the trained run)."""
    return SAMPLERS[name].config_keys() - (NoiseScheduler.config_keys() - SAMPLING_OPTIONS)


def default_options(name: str) -> dict[str, Any]:
    """What ``name`` uses for each of its options when none is given: its presets, else
    the class's defaults."""
    defaults = SAMPLERS[name].config_defaults()
    return {key: SAMPLER_PRESETS[name].get(key, defaults.get(key))
            for key in sorted(sampler_options(name))}


def training_sampler_node(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A training config's ``sampler`` node as a dict: its group, or, in a run folder from
    before the group, ``trainer.sampler``, ``trainer.sample_steps`` and
    ``trainer.sample_spacing`` (DDIM, 50 steps, trailing, where those are absent too)."""
    node = cfg.get("sampler")
    if node is not None:
        return dict(node)
    trainer = cfg.get("trainer") or {}
    return {"name": "ddim", "steps": 50, "timestep_spacing": "trailing",
            **{new: trainer[old] for old, new in OLD_TRAINER_SAMPLER_KEYS.items()
               if old in trainer}}


@dataclass(frozen=True)
class SamplerSpec:
    """``name`` (a key of ``NoiseScheduler.SAMPLERS``), ``steps`` (one count, a list of counts
    for ``diffusion.evaluate``, or None for every training step), ``timestep_spacing``
    (None: the training scheduler's) and ``options`` of the sampler's class."""

    name: str = "ddim"
    steps: int | list[int] | None = 50
    timestep_spacing: str | None = "trailing"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, node: Mapping[str, Any], key: str = "sampler") -> SamplerSpec:
        """The spec of a ``sampler`` config node; an unknown sampler or option is a
        one-sentence ValueError naming ``key`` as the user types it."""
        node = dict(node)
        name = check_sampler(node.get("name"), key)
        options = {k: v for k, v in node.items() if k not in GENERIC_KEYS}
        unknown = sorted(set(options) - sampler_options(name))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not an option of {key}={name}: use one of "
                             f"{', '.join([*GENERIC_KEYS, *sorted(sampler_options(name))])}.")
        if node.get("timestep_spacing") is not None \
                and "timestep_spacing" not in SAMPLERS[name].config_keys():
            raise ConfigError(f"{key}.timestep_spacing does not apply to {key}={name}, whose "
                              f"times are evenly spaced from 1 to t_min: set it to null.")
        steps = node.get("steps")
        if isinstance(steps, Sequence) and not isinstance(steps, str):
            steps = list(steps)
        return cls(name, steps, node.get("timestep_spacing"), options)

    @classmethod
    def of_run(cls, cfg: Mapping[str, Any]) -> SamplerSpec:
        """The sampler a training config (a run folder's ``config.yaml``) draws its grids and
        periodic FID with: its ``sampler`` group, one step count (``training_sampler_node``: also
        of a run folder from before the group)."""
        return cls.from_config(training_sampler_node(cfg)).one_step_count(
            "the training grids and periodic FID")

    def describe(self) -> str:
        """``ddim, 50 steps (trailing)``: the name, steps, spacing and changed options."""
        steps = "every training step" if self.steps is None else f"{self.steps} steps"
        spacing = self.timestep_spacing or (
            "the training scheduler's spacing" if "timestep_spacing" in
            SAMPLERS[self.name].config_keys() else "evenly spaced in time")
        options = "".join(f", {k}={v}" for k, v in self.changed_options().items())
        eta = f", eta={self.eta:g}" if self.eta else ""
        return f"{self.name}, {steps} ({spacing}{eta}{options})"

    @property
    def eta(self) -> float:
        return self.options.get("eta", 0.0)

    @property
    def stochastic(self) -> bool:
        """Whether its steps draw noise (its images then depend on the batching)."""
        return SAMPLERS[self.name](**{**SAMPLER_PRESETS[self.name], **self.options}).stochastic

    def one_step_count(self, used_by: str) -> SamplerSpec:
        """Itself, if ``steps`` is one count (``used_by`` takes one; only diffusion.evaluate
        takes several)."""
        if isinstance(self.steps, list):
            raise ConfigError(f"sampler.steps must be one step count for {used_by}; got "
                              f"{self.steps} (diffusion.evaluate takes several).")
        return self

    def step_counts(self, num_train_timesteps: int) -> list[int]:
        """``steps`` as a list, None meaning every training step."""
        if self.steps is None:
            return [num_train_timesteps]
        return list(self.steps) if isinstance(self.steps, list) else [self.steps]

    def check(self, num_train_timesteps: int, key: str = "sampler", *, scheduler: Any = None,
              **extra: Any) -> None:
        """Every value, before any model is loaded (``extra``: ``n``, ``batch_size``); an
        option's value is checked by building the sampler over the run's training noise
        process ``scheduler`` (a probe DDPM schedule when None), which also refuses a discrete
        sampler for a continuous-time process."""
        check_sampling(self.name, self.step_counts(num_train_timesteps), self.eta,
                       num_train_timesteps, prefix=f"{key}.",
                       timestep_spacing=self.timestep_spacing)
        for name, value in extra.items():
            check_int(name, value)
        try:
            self.build(SAMPLERS["ddpm"](num_train_timesteps=num_train_timesteps)
                       if scheduler is None else scheduler)
        except ValueError as exc:
            message = str(exc)
            named = message.split(" ", 1)[0] in self.options
            raise ConfigError(f"{key}.{message}" if named else message) from None

    def build(self, train_scheduler: NoiseScheduler) -> NoiseScheduler:
        """The scheduler over ``train_scheduler``'s noise process (betas, prediction type,
        clipping) with these options and this spacing."""
        options = {k: v for k, v in self.options.items() if k != "eta"}
        return make_sampler(train_scheduler, self.name, self.eta, self.timestep_spacing,
                            **options)

    def changed_options(self) -> dict[str, Any]:
        """The options that differ from the sampler's defaults (eta aside: it is recorded
        on its own), as an evaluation record states them."""
        defaults = default_options(self.name)
        return {k: v for k, v in sorted(self.options.items())
                if k != "eta" and defaults.get(k) != v}
