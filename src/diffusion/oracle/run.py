"""The exact-score harness: every registered sampler driven by an exact model of a Gaussian
mixture, and scored against exact samples.

The data are Gaussian mixtures (``diffusion.oracle.mixtures``), for which the best network
output at every noise level is known in closed form. Each sampler runs through
``DiffusionPipeline`` exactly as it samples images (``make_sampler``, ``set_timesteps``,
``init_noise_sigma``, ``scale_model_input``, ``step``) with that exact model in place of a
network, so what is left between its samples and the data is the sampler's own error:
discretisation, the start from N(0, I) at the first timestep, the last step's landing.

For each data set, noise schedule, timestep spacing and sampler, and each target number of
model calls (NFE), the sampler draws ``n`` samples from the same x_T (and, for stochastic
samplers, the same step-noise seed), and is scored by the sliced Wasserstein-2 distance to
``n`` fresh exact samples (the same reference set and projections for every sampler). The
floor is that distance between two exact sample sets: the score of a perfect sampler at
this ``n``. ``excess`` = sqrt(max(SW^2 - floor^2, 0)) estimates the sampler's own part,
if its error and the sampling noise add in quadrature. Mode statistics (coverage, the
share near a mode, the spread within modes) resolve what the distance cannot at this n.

``run_oracle`` returns all of it as plain data, which ``diffusion.oracle.report`` writes out.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from diffusion.checks import check_int, check_number
from diffusion.oracle.mixtures import (
    DATASETS,
    ExactModel,
    GaussianMixture,
    SlicedW2,
    mode_stats,
    projections,
)
from diffusion.processes import PROCESSES, Process
from diffusion.sampling import pipeline
from diffusion.sampling.checks import SAMPLER_PRESETS, SAMPLERS
from diffusion.schedulers import CONTINUOUS_SAMPLERS, DDPMScheduler, NoiseScheduler
from diffusion.schedulers.base import PREDICTION_TYPES, TIMESTEP_SPACINGS
from diffusion.schedulers.betas import BETA_SCHEDULES


@dataclass
class OracleConfig:
    """One harness run. ``clip_sample`` is off by default: the mixtures lie inside [-1, 1]
    (4 stds), so clipping could only hide errors of the sampler's x_0 estimate."""

    samplers: list[str] = field(default_factory=lambda: sorted(SAMPLERS))
    nfe: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100, 1000])
    n: int = 10_000
    seed: int = 0
    datasets: list[str] = field(default_factory=lambda: ["ring", "mix64"])
    schedules: list[str] = field(default_factory=lambda: ["linear", "cosine"])
    spacings: list[str] = field(default_factory=lambda: ["leading", "trailing"])
    prediction_types: list[str] = field(default_factory=lambda: ["epsilon"])
    projections: int = 500
    floor_repeats: int = 5
    clip_sample: bool = False
    eta: float = 0.0
    num_train_timesteps: int = 1000
    tolerances: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
    """rtol = atol of each run of an adaptive sampler (``rk45``), in place of ``nfe``: it
    picks its own steps, and the calls it made are what the tables and plot show."""

    def check(self) -> None:
        """One-sentence errors for bad options, before any sampling."""
        registered = sorted(SAMPLERS)
        for name in self.samplers:
            if name not in registered:
                raise ValueError(f"unknown sampler {name!r}; valid samplers are "
                                 f"{', '.join(registered)}.")
        for key, values, valid in (("dataset", self.datasets, sorted(DATASETS)),
                                   ("schedule", self.schedules,
                                    sorted(BETA_SCHEDULES) + sorted(ORACLE_PROCESSES)),
                                   ("spacing", self.spacings, TIMESTEP_SPACINGS),
                                   ("prediction type", self.prediction_types, PREDICTION_TYPES)):
            for value in values:
                if value not in valid:
                    raise ValueError(f"unknown {key} {value!r}; valid ones are "
                                     f"{', '.join(valid)}.")
        for nfe in self.nfe:
            check_int("each NFE", nfe, 1, self.num_train_timesteps)
        for tolerance in self.tolerances:
            check_number("each tolerance", tolerance, above=0)
        for key, minimum in (("n", 2), ("projections", 1), ("floor_repeats", 1)):
            check_int(key, getattr(self, key), minimum)
        check_number("eta", self.eta, 0, 1)
        for key, values in (("samplers", self.samplers), ("nfe", self.nfe),
                            ("tolerances", self.tolerances),
                            ("datasets", self.datasets), ("schedules", self.schedules),
                            ("spacings", self.spacings),
                            ("prediction-types", self.prediction_types)):
            if not values:
                raise ValueError(f"--{key} names nothing: give at least one value.")
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise ValueError(f"--{key} lists {', '.join(repeated)} more than once: each "
                                 "value once (a repeat would only run again).")
        takes_eta = [s for s in self.samplers if takes_harness_eta(s)]
        if self.eta and not takes_eta:
            raise ValueError(f"--eta {self.eta:g} changes nothing: none of "
                             f"{', '.join(self.samplers)} takes eta (ddim does).")


def steps_for_nfe(nfe: int, order: int) -> int:
    """Reverse steps whose model calls come closest to ``nfe`` without passing it for a
    sampler that makes ``order`` calls per step: ``nfe`` for first-order samplers;
    (nfe + 1) // 2 for a second-order one such as Heun, whose 2 * steps - 1 calls (its
    last step is a plain Euler step) then equal an odd ``nfe`` and fall one short of an
    even one. The harness counts the calls actually made and reports those."""
    return max(1, -(-nfe // order))


def continuous_steps_for_nfe(sampler, nfe: int) -> int:
    """The most steps whose model calls (``len(sampler.timesteps)``: predictor, corrector
    and denoising calls) do not pass ``nfe``; the fewest steps it takes when even those do."""
    fewest = None
    for steps in range(nfe, 0, -1):
        try:
            sampler.set_timesteps(steps)
        except ValueError:  # below the sampler's least steps (2 for a predictor)
            continue
        fewest = steps
        if len(sampler.timesteps) <= nfe:
            return steps
    return fewest or 1


def stream_seed(seed: int, *tags: object) -> int:
    """The seed of one named random stream of a run (x_T, step noise, reference set,
    projections): each is fixed by (``seed``, ``tags``) alone, independently of the others."""
    text = "/".join(map(str, (seed, *tags)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU generator seeded with ``stream_seed(seed, *tags)``."""
    return torch.Generator().manual_seed(stream_seed(seed, *tags))


def training_scheduler(cfg: OracleConfig, schedule: str, spacing: str,
                       prediction_type: str) -> NoiseScheduler | Process:
    """The noise process the exact model is "trained" on; the samplers copy it. A schedule
    named after a continuous process (``edm``, ``flow``, ``vp``, ``vp_cosine``, ``subvp``) is
    that process with its own defaults, its own prediction type included (EDM's v, flow's
    velocity), whatever ``prediction_type`` says."""
    if schedule in ORACLE_PROCESSES:
        return ORACLE_PROCESSES[schedule]()
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=schedule,
                         timestep_spacing=spacing, prediction_type=prediction_type,
                         clip_sample=cfg.clip_sample)


ORACLE_PROCESSES = {name: PROCESSES[name] for name in ("edm", "flow", "vp", "vp_cosine", "subvp")}
"""The continuous processes the harness can train its exact model on (``--schedules``)."""


def runs_on(sampler: str, train) -> bool:
    """Whether ``sampler`` can walk ``train``'s process: the discrete samplers need a DDPM
    table, and only the velocity samplers start where alpha(1) = 0 (flow)."""
    try:
        SAMPLERS[sampler].over(train, **SAMPLER_PRESETS[sampler])
    except ValueError:
        return False
    return True


def takes_harness_eta(sampler: str) -> bool:
    """Whether ``--eta`` applies to ``sampler``: DDIM's, whose own default is 0 (the ancestral
    samplers' eta, 1 by default, is theirs: 0 would make edm_euler_a plain Euler)."""
    cls = SAMPLERS[sampler]
    return "eta" in cls.config_keys() and cls.config_defaults().get("eta") == 0.0


def is_adaptive(sampler: str) -> bool:
    """Whether the sampler named ``sampler`` picks its own steps (run at ``tolerances``)."""
    return bool(getattr(SAMPLERS[sampler], "adaptive", False))


def sample_with(mixture: GaussianMixture, train: NoiseScheduler, sampler: str, nfe: int,
                x_T: torch.Tensor, step_seed: int, eta: float = 0.0,
                tolerance: float | None = None) -> dict:
    """Draw ``len(x_T)`` samples with ``sampler`` at about ``nfe`` model calls (an adaptive
    sampler: at rtol = atol = ``tolerance``, ``nfe`` its cap), through the pipeline's own
    loop. Returns the samples (n, D), the steps asked for, the calls made and the seconds
    taken."""
    cls = SAMPLERS[sampler]
    if takes_harness_eta(sampler):
        pass
    elif "eta" in cls.config_keys():  # an ancestral sampler keeps its own (edm_euler_a: 1)
        eta = SAMPLER_PRESETS[sampler].get("eta", cls.config_defaults().get("eta"))
    else:
        eta = 0.0
    tolerances = {} if tolerance is None else {"rtol": tolerance, "atol": tolerance}
    built = pipeline.make_sampler(train, sampler, eta, **tolerances)
    if tolerance is not None:
        steps = nfe
        model = ExactModel(mixture, prediction_type=train.prediction_type,
                           process=built.process)
    elif sampler in CONTINUOUS_SAMPLERS:  # the table read in continuous time, exactly
        steps = continuous_steps_for_nfe(built, nfe)
        model = ExactModel(mixture, prediction_type=train.prediction_type,
                           process=built.process)
    else:
        steps = steps_for_nfe(nfe, built.order)
        model = ExactModel(mixture, train.alphas_cumprod, train.prediction_type)
    pipe = pipeline.DiffusionPipeline(model, train, (mixture.dim, 1, 1), device="cpu",
                                      precision="fp32", num_classes=None)
    start = time.perf_counter()
    out = pipe(len(x_T), steps=steps, sampler=built if tolerance is not None else sampler,
               eta=None if tolerance is not None else eta, timestep_spacing=None,
               noise=x_T.reshape(len(x_T), mixture.dim, 1, 1),
               generator=torch.Generator().manual_seed(step_seed), batch_size=len(x_T))
    seconds = time.perf_counter() - start
    return {"samples": out.images.reshape(len(x_T), mixture.dim).double(), "steps": steps,
            "nfe": model.calls, "seconds": seconds}


def run_oracle(cfg: OracleConfig, log=None) -> dict:
    """Every (data set, schedule, spacing, prediction type, sampler, NFE) of ``cfg``: a dict
    with the settings, the floors and one record per sampler run (see the module docstring)."""
    cfg.check()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    floors, runs = {}, []
    for name in cfg.datasets:
        mixture = DATASETS[name]()
        directions = projections(mixture.dim, cfg.projections, generator(cfg.seed, name, "proj"))
        reference = mixture.sample(cfg.n, generator(cfg.seed, name, "reference"))
        distance = SlicedW2(reference, directions)
        values = [distance(mixture.sample(cfg.n, generator(cfg.seed, name, "exact", i)))
                  for i in range(cfg.floor_repeats)]
        floor = sum(values) / len(values)
        spread = (sum((v - floor) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        floors[name] = {"dim": mixture.dim, "mean": floor, "std": spread, "values": values,
                        "modes": mode_stats(mixture, reference)}
        log(f"{name}: floor {floor:.5f} (std {spread:.5f} over {len(values)} exact sets)")
        x_T = torch.randn(cfg.n, mixture.dim, generator=generator(cfg.seed, name, "x_T"))
        targets = []  # (sampler, target NFE, tolerance): an adaptive one at each tolerance
        for sampler in cfg.samplers:
            targets += ([(sampler, None, tol) for tol in cfg.tolerances] if is_adaptive(sampler)
                        else [(sampler, nfe, None) for nfe in cfg.nfe])
        for schedule, spacing, prediction, (sampler, nfe, tolerance) in itertools.product(
                cfg.schedules, cfg.spacings, cfg.prediction_types, targets):
            train = training_scheduler(cfg, schedule, spacing, prediction)
            if not runs_on(sampler, train):
                continue
            prediction = train.prediction_type
            got = sample_with(mixture, train, sampler, nfe or cfg.num_train_timesteps, x_T,
                              stream_seed(cfg.seed, name, "steps"), cfg.eta, tolerance)
            sw = distance(got["samples"])
            runs.append({"dataset": name, "schedule": schedule, "spacing": spacing,
                         "prediction_type": prediction, "sampler": sampler, "target_nfe": nfe,
                         "tolerance": tolerance,
                         "steps": got["steps"], "nfe": got["nfe"], "sw": sw,
                         "sw_over_floor": sw / floor, "excess": max(sw**2 - floor**2, 0) ** 0.5,
                         "seconds": got["seconds"],
                         "modes": mode_stats(mixture, got["samples"])})
            tol = "" if tolerance is None else f" tol {tolerance:g}"
            log(f"{name} {schedule} {spacing} {prediction} {sampler}{tol} NFE {got['nfe']}: "
                f"SW {sw:.5f} ({sw / floor:.2f}x floor) {got['seconds']:.1f}s")
    return {"config": asdict(cfg), "floors": floors, "runs": runs,
            "seconds": time.perf_counter() - started}
