"""From a config to a scorer: the feature network ``metrics.features`` names, the
``FidScorer`` over a run's data, and the trainer's periodic ``FidEvaluator``.

Used by ``diffusion.evaluate``, ``diffusion.train`` (``trainer.eval_every``) and the bench,
so each scores the same way.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from diffusion.checks import check_bool, check_choice, check_int, check_number
from diffusion.config.sampler import training_sampler
from diffusion.data import dataset_options
from diffusion.errors import ConfigError
from diffusion.metrics.features import load_feature_network
from diffusion.metrics.fid import DataRef, FidEvaluator, FidScorer
from diffusion.metrics.inception import InceptionFeatures
from diffusion.metrics.nll import TRACES
from diffusion.runtime import distributed as dist
from diffusion.runtime.device import resolve_device

FEATURES = ("domain", "inception")


def feature_network(metrics: DictConfig, data: DataRef, device: str | torch.device = "cpu",
                    progress: bool = True):
    """The feature module ``metrics.features`` names, on ``device``."""
    if metrics.features == "inception":
        return InceptionFeatures(metrics.get("inception_weights")).to(device)
    if metrics.features != "domain":
        raise ConfigError(f"metrics.features must be one of {', '.join(FEATURES)}; "
                          f"got {metrics.features!r}.")
    return load_feature_network(data.dataset, root=data.root, image_size=data.image_size,
                                center_crop=data.center_crop, cache_dir=metrics.get("cache_dir"),
                                progress=progress, device=device, options=data.options,
                                epochs=metrics.get("feature_epochs"))


def build_scorer(metrics: DictConfig, data: DictConfig, device: str | torch.device = "cpu",
                 progress: bool = False, root: str | None = None) -> FidScorer:
    """A ``FidScorer`` for the data a run trains on, as ``metrics`` (conf/metrics) says."""
    ref = DataRef(dataset=data.name, root=root or data.get("root"),
                  image_size=data.get("image_size"), center_crop=bool(data.get("center_crop")),
                  options=dataset_options(data))
    with dist.main_first():  # rank 0 trains or extracts and caches; the others read the cache
        features = feature_network(metrics, ref, device, progress=dist.is_main())
        if getattr(features, "description", None) is not None and dist.is_main():
            print(f"Feature network {features.feature_id}: {features.description}",
                  flush=True)
        return FidScorer(features, ref, reference_n=metrics.get("reference_n"), kid=metrics.kid,
                         kid_subset_size=metrics.kid_subset_size, batch_size=metrics.batch_size,
                         seed=metrics.seed, cache_dir=metrics.get("cache_dir"),
                         progress=progress and dist.is_main())


def build_evaluator(cfg: DictConfig, device: str | torch.device | None = None) -> FidEvaluator:
    """The trainer's periodic FID (``trainer.eval_every``) from a training config:
    ``trainer.eval_n`` samples with the grids' sampler (the ``sampler`` group, one step
    count), scored as ``metrics`` says; the trainer keeps the best as best.pt."""
    metrics, trainer = cfg.get("metrics"), cfg.trainer
    if metrics is None:
        raise ConfigError("trainer.eval_every needs a metrics config: add metrics=fid (this run "
                          "was made before metrics existed) or set trainer.eval_every=0.")
    try:  # before the feature network is trained or loaded
        sampler = training_sampler(cfg)
        scheduler = instantiate(cfg.scheduler)
        sampler.check(scheduler.num_train_timesteps, scheduler=scheduler)
        check_int("metrics.batch_size", metrics.batch_size)
        check_int("trainer.eval_n", trainer.eval_n, minimum=2)
        check_metrics(metrics)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    scorer = build_scorer(metrics, cfg.data, device=resolve_device(device or trainer.device))
    return FidEvaluator(scorer, n=trainer.eval_n, sampler=sampler,
                        batch_size=metrics.batch_size)


NLL_KEYS = ("name", "trace", "rtol", "atol", "vlb", "batch_size", "seed")
"""The keys of ``metrics=nll`` (conf/metrics/nll.yaml)."""


def is_nll(metrics: DictConfig) -> bool:
    """Whether ``metrics`` asks for the likelihood (``metrics=nll``) rather than FID."""
    return metrics.get("name") == "nll"


def check_nll_metrics(metrics: DictConfig) -> None:
    """The ``metrics=nll`` settings (conf/metrics/nll.yaml)."""
    unknown = sorted(set(metrics) - set(NLL_KEYS))
    if unknown:
        raise ConfigError(f"metrics.{unknown[0]} is not an option of metrics=nll: use one of "
                          f"{', '.join(NLL_KEYS[1:])}.")
    check_choice("metrics.trace", metrics.trace, TRACES)
    check_number("metrics.rtol", metrics.rtol, above=0)
    check_number("metrics.atol", metrics.atol, above=0)
    check_bool("metrics.vlb", metrics.vlb)
    check_int("metrics.batch_size", metrics.batch_size)
    check_int("metrics.seed", metrics.seed, minimum=None)


def check_metrics(metrics: DictConfig) -> None:
    """The ``metrics.*`` settings (conf/metrics/fid.yaml, or nll.yaml), before any feature
    network work."""
    if is_nll(metrics):
        check_nll_metrics(metrics)
        return
    if metrics.features not in FEATURES:
        raise ConfigError(f"metrics.features must be one of {', '.join(FEATURES)}; "
                          f"got {metrics.features!r}.")
    check_int("metrics.batch_size", metrics.batch_size)
    check_int("metrics.kid_subset_size", metrics.kid_subset_size)
    check_bool("metrics.kid", metrics.kid)
    check_int("metrics.seed", metrics.seed, minimum=None)
    if metrics.get("reference_n") is not None:
        check_int("metrics.reference_n", metrics.reference_n, minimum=2)
    if metrics.get("feature_epochs") is not None:
        check_int("metrics.feature_epochs", metrics.feature_epochs)
