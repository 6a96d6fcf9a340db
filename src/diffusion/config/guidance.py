"""The guidance options of ``diffusion.sample`` and ``diffusion.evaluate``: ``labels``,
``guidance_scale``, ``guidance_rescale``, ``classifier`` and ``classifier_scale``.

Checked from the run's config.yaml (and the classifier run's) before any model is loaded, so
a mistake costs no sampling; each ends in one sentence. ``build_guidance`` then turns the
checked values into a ``diffusion.sampling.guidance.Guidance``, loading the classifier once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn

from diffusion.config.runs import run_config
from diffusion.data.datasets import data_key
from diffusion.errors import USER_ERRORS, ConfigError
from diffusion.runs.load import load_classifier
from diffusion.runs.records import read_json
from diffusion.sampling.guidance import Guidance
from diffusion.training.checkpoint import latest_checkpoint

NOISE_PROCESS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                 "rescale_betas_zero_snr")
"""What a noise-aware classifier was trained for: the diffusion run must share it."""
DATA = ("name", "channels", "image_size", "center_crop")


def as_list(key: str, value: Any, allow_list: bool) -> list:
    """``value`` as a list of scales (evaluate sweeps them; sample takes one)."""
    if isinstance(value, list | tuple | ListConfig):
        if not allow_list or not value:
            raise ConfigError(f"{key} must be one number here; got {list(value)!r}.")
        return list(value)
    return [value]


@dataclass(frozen=True)
class GuidanceOptions:
    """The checked options: scales to draw with, the classifier run (None: none) and the
    number of classes the labels index (None: an unconditional draw)."""

    scales: list[float | None]
    rescale: float
    classifier: Path | None
    classifier_scales: list[float | None]
    label_classes: int | None

    @property
    def guided(self) -> bool:
        return self.scales != [None] or self.classifier is not None


def check_classifier_run(classifier: str, run: str, run_cfg: DictConfig) -> DictConfig:
    """The classifier run's config; it must classify the run's data under its noise process."""
    if run_cfg.get("latent_space"):
        raise ConfigError(f"run {run} denoises an autoencoder's latents and classifier= "
                          "classifies noised images, not latents: guide it with "
                          "guidance_scale= (classifier-free) instead.")
    cfg = run_config(classifier, key="classifier")
    if "classifier_net" not in cfg:
        raise ConfigError(f"classifier={classifier} is not a classifier run: pass a folder "
                          "that diffusion.train_classifier printed.")
    for group, keys in (("data", DATA), ("scheduler", NOISE_PROCESS)):
        for key in keys:
            mine, theirs = cfg[group].get(key), run_cfg[group].get(key)
            if mine != theirs:
                raise ConfigError(
                    f"classifier={classifier} was trained with {group}.{key}={mine} but run "
                    f"{run} has {theirs}: train the classifier with the run's settings "
                    f"(python -m diffusion.train_classifier {group}.{key}={theirs} ...).")
    _check_finished(classifier, cfg)
    _check_same_files(classifier, run, run_cfg)
    return cfg


def _check_finished(classifier: str, cfg: DictConfig) -> None:
    """A classifier run that stopped early (interrupted, failed, killed) is refused: its
    weights are not the classifier its config describes."""
    folder = Path(classifier)
    status = read_json(folder / "status.json").get("status") if (
        folder / "status.json").is_file() else None
    finished = status == "completed" or (status is None and (folder / "accuracy.json").is_file())
    if finished:
        return
    newest = latest_checkpoint(folder / "checkpoints")
    reached = f"step {int(newest.stem.split('_')[1])}" if newest else "no checkpoint"
    raise ConfigError(
        f"classifier={classifier} stopped at {reached} of {cfg.steps} "
        f"({status or 'killed'}): continue it with python -m diffusion.train_classifier "
        f"resume={classifier}, or pass another classifier.")


def _check_same_files(classifier: str, run: str, run_cfg: DictConfig) -> None:
    """A classifier of a folder of the user's own images must have learned from the run's
    folder (the same files), not from another one with as many classes."""
    record = Path(classifier) / "data.json"
    mine = read_json(record).get("content_key") if record.is_file() else None
    if not mine or "@" not in mine:
        return  # a named dataset (checked above), or a run of an earlier version
    try:
        theirs = data_key(run_cfg.data)
    except USER_ERRORS:
        return  # the run's images are gone: nothing to compare with
    if mine != theirs:
        raise ConfigError(
            f"classifier={classifier} was trained on other images than run {run} "
            f"(data.root={run_cfg.data.get('root')}, or its files changed since): train the "
            "classifier on the run's folder (python -m diffusion.train_classifier "
            f"data=image_folder data.root={run_cfg.data.get('root')} ...).")


def check_guidance_options(cfg: DictConfig, run_cfg: DictConfig,
                           allow_lists: bool = False) -> GuidanceOptions:
    """The guidance keys of ``cfg`` against the run's config (``run_cfg``)."""
    scales = as_list("guidance_scale", cfg.guidance_scale, allow_lists)
    classifier_scales = as_list("classifier_scale", cfg.classifier_scale, allow_lists)
    if cfg.classifier:  # a classifier alone guides at scale 1 unless told otherwise
        classifier_scales = [1.0 if s is None else s for s in classifier_scales]
    elif classifier_scales != [None]:
        raise ConfigError("classifier_scale needs classifier=<a run folder of "
                          "diffusion.train_classifier>; set one, or leave classifier_scale out.")
    if cfg.guidance_rescale and scales == [None]:
        raise ConfigError(f"guidance_rescale={cfg.guidance_rescale} rescales classifier-free "
                          "guidance, which only guidance_scale turns on: set guidance_scale, or "
                          "leave guidance_rescale out.")
    model_classes = run_cfg.model.get("num_classes")
    for scale in scales:
        for classifier_scale in classifier_scales:  # range checks, in Guidance's words
            guidance = Guidance(scale=1.0 if scale is None else scale,
                                rescale=cfg.guidance_rescale,
                                classifier_scale=classifier_scale or 0.0)
            guidance.label_classes(model_classes)
            if guidance.classifier_free and not run_cfg.trainer.get("label_dropout"):
                raise ConfigError(
                    f"guidance_scale={scale:g} needs the model's unconditional prediction, but "
                    f"run {cfg.run} was trained without label dropout (trainer.label_dropout "
                    "is 0), so its null label is untrained: train with conditioning=class, "
                    "or leave guidance_scale out.")
    classifier, label_classes = None, model_classes
    if cfg.classifier:
        classifier_cfg = check_classifier_run(cfg.classifier, cfg.run, run_cfg)
        classifier, label_classes = Path(cfg.classifier), classifier_cfg.data.num_classes
    options = GuidanceOptions(scales, float(cfg.guidance_rescale), classifier,
                              classifier_scales, label_classes)
    if options.guided and cfg.get("labels", "all") is None:  # evaluate: always balanced
        raise ConfigError("Guidance needs labels to steer towards: pass labels=3, "
                          "labels=[0,1,2] or labels=all (every class equally often).")
    return options


def build_guidance(options: GuidanceOptions, scale: float | None, classifier_scale: float | None,
                   classifier: nn.Module | None = None) -> Guidance:
    """The ``Guidance`` for one (guidance scale, classifier scale) of ``options``; pass the
    loaded ``classifier`` (``load_options_classifier``) to draw several without reloading."""
    return Guidance(scale=1.0 if scale is None else float(scale), rescale=options.rescale,
                    classifier=classifier, classifier_scale=float(classifier_scale or 0.0))


def load_options_classifier(options: GuidanceOptions) -> nn.Module | None:
    """The classifier of ``options`` (its newest checkpoint), or None."""
    return None if options.classifier is None else load_classifier(options.classifier)


def guidance_record(options: GuidanceOptions, scale: float | None,
                    classifier_scale: float | None) -> dict:
    """What ``eval.json`` records of one guided evaluation (every key, None when unset)."""
    return {"guidance_scale": scale,
            "guidance_rescale": options.rescale if scale is not None else None,
            "labels": "balanced" if options.label_classes is not None else None,
            "classifier": str(options.classifier) if options.classifier else None,
            "classifier_scale": classifier_scale}


def guidance_args(cfg: DictConfig) -> list[str]:
    """The guidance options of ``cfg`` as command-line words (those that are set)."""
    def words(value) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, list | ListConfig) \
            else f"{value:g}"

    args = []
    if cfg.guidance_scale is not None:
        args.append(f"guidance_scale={words(cfg.guidance_scale)}")
        if cfg.guidance_rescale:
            args.append(f"guidance_rescale={cfg.guidance_rescale:g}")
    if cfg.classifier:
        args.append(f"classifier={cfg.classifier}")
    if cfg.classifier_scale is not None:
        args.append(f"classifier_scale={words(cfg.classifier_scale)}")
    return args
