"""The continuous-time samplers by name, beside the discrete ones (``NoiseScheduler.SAMPLERS``).

``sampler=pc`` (predictor-corrector), ``em`` (reverse-SDE Euler-Maruyama), ``ode``
(probability-flow ODE, Heun) and ``ald`` (annealed Langevin dynamics) walk a continuous-time
``Process``: the run's own (``scheduler=vp|vp_cosine|subvp|ve``), or a DDPM run's table seen in
continuous time (``DiscreteProcess``), so they sample every trained run. The discrete samplers
(ddpm, ddim, DPM-Solver, Euler, Heun) need a DDPM table and refuse a continuous process.

A sampler class here takes ``process`` first and its own options as keywords;
``over(training_noise_process, **options)`` builds it for a run, as the discrete classes'
``over`` does.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from diffusion.processes.base import Process
from diffusion.processes.discrete import DiscreteProcess

CONTINUOUS_SAMPLERS: dict[str, type] = {}
"""name -> class of the continuous-time samplers (``sampler=name``)."""
CONTINUOUS_PRESETS: dict[str, dict[str, Any]] = {}
"""name -> the options that name presets on its class."""


def as_process(noise_process: Any) -> Process:
    """``noise_process`` as a continuous-time process: a ``Process`` itself, or a DDPM
    scheduler's table (``DiscreteProcess.of``)."""
    if isinstance(noise_process, Process):
        return noise_process
    if hasattr(noise_process, "alphas_cumprod") and hasattr(noise_process, "prediction_type"):
        return DiscreteProcess.of(noise_process)
    raise ValueError(f"a continuous-time sampler needs a noise process (a "
                     f"diffusion.processes.Process or a DDPM scheduler); got {noise_process!r}.")


def checked_process(process: Any) -> Process | None:
    """A sampler's ``process`` argument: a ``Process``, or None (set later by ``over``)."""
    if process is not None and not isinstance(process, Process):
        raise ValueError(f"process must be a diffusion.processes.Process; got {process!r}.")
    return process


class ContinuousSampler:
    """What the sampler registry reads from a continuous-time sampler class: its options
    (``config_keys``, ``config_defaults``) and ``over``. A subclass statement with
    ``sampler_name="x"`` registers it; ``register`` adds presets under other names."""

    process: Process | None
    order: ClassVar[int] = 1

    def __init_subclass__(cls, sampler_name: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if sampler_name is not None:
            register(sampler_name, cls)

    @classmethod
    def config_keys(cls) -> set[str]:
        """The sampler's own options: its keyword-only constructor arguments."""
        return {name for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    #: whether it can start where alpha(1) = 0 (flow matching's t = 1, where the SDE's drift
    #: and the noise level sigma / alpha are infinite): only the velocity samplers can
    zero_terminal_snr: ClassVar[bool] = False

    @classmethod
    def over(cls, noise_process: Any, **options: Any):
        """This sampler over a run's training noise process (see ``as_process``)."""
        process = as_process(noise_process)
        if not cls.zero_terminal_snr and float(process.alpha(process.t_max)) == 0.0:
            # the course's sampler (corrupt) is named for the process that needs it alone
            own = ("corrupt",) if not getattr(process, "gaussian", True) else ()
            takes = ", ".join([*own, *sorted(name for name, c in CONTINUOUS_SAMPLERS.items()
                                             if c.zero_terminal_snr and name != "corrupt")])
            raise ValueError(f"{cls.__name__} steps the SDE or the noise level sigma / alpha, "
                             f"which are infinite at t = 1 for {type(process).__name__} "
                             f"(alpha(1) = 0): sample it with sampler={takes}.")
        return cls(process, **options)

    def _process(self) -> Process:
        """The process, or a sentence saying how to give one."""
        if self.process is None:
            raise ValueError(f"{type(self).__name__} was built without a process: build it "
                             f"with {type(self).__name__}(process) or .over(run scheduler).")
        return self.process


def register(name: str, cls: type, **presets: Any) -> None:
    """Make ``sampler=name`` mean ``cls.over(training noise process, **presets)``."""
    unknown = set(presets) - cls.config_keys()
    if unknown:
        raise ValueError(f"{cls.__name__} takes no option {', '.join(sorted(unknown))}.")
    CONTINUOUS_SAMPLERS[name] = cls
    CONTINUOUS_PRESETS[name] = dict(presets)
