"""Loading a run folder back without Hydra: its config as plain data, the objects it names,
its newest checkpoint, and the trained model.

A run folder's ``config.yaml`` is the resolved config the run started with, so plain YAML
reads it; objects are built from their ``_target_`` nodes by ``instantiate`` below, which does
what the run folders need of Hydra's (a class or function by its dotted name, its arguments,
nested targets, ``_partial_``). So a notebook loads a run with this package alone, and the
library stays free of the command line's config machinery.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from diffusion.errors import CheckpointError, ConfigError, RunError
from diffusion.models.adapters import load_saved
from diffusion.models.control import ControlImages
from diffusion.models.controlnet import ControlNet
from diffusion.models.diffusers_unet import weights_follow
from diffusion.models.latent import LatentSpace
from diffusion.models.lora import LoRA, add_lora, merge_lora
from diffusion.training.checkpoint import file_sha256, latest_checkpoint, load, load_weights

RUN_EXAMPLE = "runs/<name>/<date>_<time>"


class _Loader(yaml.SafeLoader):
    """YAML 1.2's floats (``1e-4`` without a dot), as OmegaConf writes and reads them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
               |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
               |\.[0-9_]+(?:[eE][-+][0-9]+)?
               |[-+]?\.(?:inf|Inf|INF)
               |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def not_a_run(run: str | Path, key: str = "run") -> RunError:
    """The one sentence for a path that is not a run folder."""
    return RunError(f"{key}={run} is not a run folder (no config.yaml in it): pass the folder "
                    f"that diffusion.train printed, e.g. {RUN_EXAMPLE}.")


def read_config(run: str | Path, key: str = "run") -> dict:
    """The resolved config ``run`` was started with, as plain dicts and lists."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise not_a_run(run, key)
    try:
        cfg = yaml.load(path.read_text(), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} no longer reads as YAML ({str(exc).splitlines()[0]}): restore "
                       "it from .hydra/config.yaml in the same folder or from a copy.") from None
    if not isinstance(cfg, dict):
        raise RunError(f"{path} holds no config: restore it from .hydra/config.yaml in the "
                       "same folder or from a copy.")
    return cfg


def newest_checkpoint(run: str | Path, fix: str = "train it longer (trainer.ckpt_every sets "
                      "how often they are written)") -> Path:
    """The newest ``checkpoints/step_*.pt`` of ``run``, or the one sentence saying there is
    none yet and ``fix``."""
    checkpoint = latest_checkpoint(Path(run) / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"Run {run} has no checkpoints yet: {fix}.")
    return checkpoint


def locate(target: str) -> Any:
    """The object a dotted ``_target_`` names (``diffusion.models.AttentionUNet``): the longest
    importable module prefix, then attributes."""
    parts = str(target).split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                break
            found = getattr(found, attribute)
        else:
            return found
        break
    raise ConfigError(f"_target_ {target} names nothing importable: check its spelling.")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``node`` with every mapping that has a ``_target_`` replaced by the object it builds
    (``_partial_: true``: a ``functools.partial`` of it); ``kwargs`` add to the outer call."""
    if isinstance(node, list | tuple):
        return [instantiate(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    args = {k: instantiate(v) for k, v in node.items() if k not in ("_target_", "_partial_")}
    if "_target_" not in node:
        return {**args, **kwargs}
    factory = locate(node["_target_"])
    args.update(kwargs)
    return functools.partial(factory, **args) if node.get("_partial_") else factory(**args)


def load_run(run: str | Path, checkpoint: str | Path | None = None):
    """(model with EMA weights, training scheduler, config dict) of a run folder."""
    cfg = read_config(run)
    if "model" not in cfg or "scheduler" not in cfg:
        raise RunError(f"run={run} is not a diffusion run (its config.yaml has no model and "
                       "scheduler; a classifier run goes to classifier=): pass the folder "
                       f"that diffusion.train printed, e.g. {RUN_EXAMPLE}.")
    path = Path(checkpoint) if checkpoint is not None else newest_checkpoint(run)
    state = load(path)
    model = instantiate(weights_follow(cfg["model"]))
    if "ema" not in state:
        raise CheckpointError(f"{path} holds no EMA weights (not a diffusion.train "
                              "checkpoint): pass a checkpoint from this run's checkpoints/.")
    lora, control = lora_record(cfg), control_images(cfg)
    if lora is not None:  # the base run's weights, the adapter on them, merged
        load_base_weights(model, lora, run)
        add_lora(model, lora_spec(lora))
        load_saved(model, state["ema"]["model"], "network", path)
        merge_lora(model)
    elif control is not None:  # the base run's weights under the trained ControlNet
        load_base_weights(model, cfg["control"], run)
        model = ControlNet(model, control.channels(int(cfg["data"]["channels"])))
        load_saved(model, state["ema"]["model"], "network", path)
    else:
        load_weights(model, state["ema"]["model"], "network", path)
    return model.eval(), instantiate(cfg["scheduler"]), cfg


def control_images(cfg: Mapping) -> ControlImages | None:
    """A ControlNet run's control images (its ``control`` record); None for any other run."""
    record = cfg.get("control") or {}
    if record.get("kind", "none") == "none":
        return None
    fields = ("kind", "method", "sigma", "low", "high", "fraction", "scale")
    return ControlImages(**{key: record[key] for key in fields if key in record})


def lora_record(cfg: Mapping) -> dict | None:
    """A LoRA run's ``finetune`` record (method, rank, ..., base); None for any other run."""
    record = cfg.get("finetune") or {}
    return record if record.get("method") == "lora" else None


def lora_spec(record: Mapping) -> LoRA:
    return LoRA(rank=record["rank"], alpha=record.get("alpha"),
                dropout=record.get("dropout", 0.0), target_modules=record.get("target_modules"))


def load_base_weights(model, record: Mapping, run: str | Path = "the run") -> Path:
    """The base run's EMA weights into ``model``, from the checkpoint a fine-tuning run's
    ``finetune.base`` names, checked against the sha256 it recorded."""
    base = record.get("base") or {}
    path = Path(base.get("checkpoint") or "")
    if not base.get("checkpoint") or not path.is_file():
        raise CheckpointError(f"{run} is a fine-tuning run whose base checkpoint "
                              f"{base.get('checkpoint')} is gone: restore it (the adapter holds "
                              f"only the change to those weights).")
    if base.get("sha256") and file_sha256(path) != base["sha256"]:
        raise CheckpointError(f"{path}, the base of {run}, changed since the run started (its "
                              f"sha256 differs from the recorded one): restore the original "
                              f"file.")
    state = load(path)
    weights = state["ema"]["model"] if "ema" in state else state.get("model")
    if weights is None:
        raise CheckpointError(f"{path} holds no network weights (model or ema): pass a "
                              "diffusion.train checkpoint as the base.")
    load_weights(model, weights, "network", path)
    return path


def load_classifier(run: str | Path, checkpoint: str | Path | None = None):
    """The noise-aware classifier of a ``diffusion.train_classifier`` run folder, with the
    weights of ``checkpoint`` (default: its newest), in eval mode."""
    cfg = read_config(run, key="classifier")
    path = Path(checkpoint) if checkpoint is not None else newest_checkpoint(
        run, "let diffusion.train_classifier finish (it saves at the last step)")
    model = instantiate(cfg["classifier_net"])
    load_weights(model, load(path)["model"], "classifier", path)
    return model.eval()


def load_autoencoder(run: str | Path, checkpoint: str | Path | None = None, key: str = "latent"):
    """The KL autoencoder of a ``diffusion.train_autoencoder`` run folder with the EMA weights
    of ``checkpoint`` (default: its newest), in eval mode; ``key`` names the setting the
    folder came from in the sentences of a folder that is no autoencoder run."""
    cfg = read_config(run, key=key)
    if "autoencoder" not in cfg:
        raise RunError(f"{key}={run} is not an autoencoder run (its config has no autoencoder): "
                       f"pass a folder that python -m diffusion.train_autoencoder wrote.")
    path = Path(checkpoint) if checkpoint is not None else newest_checkpoint(
        run, "let diffusion.train_autoencoder reach its first checkpoint (eval_every)")
    state = load(path)
    if "ema" not in state:
        raise CheckpointError(f"{path} holds no EMA weights: it is not an autoencoder "
                              f"checkpoint; pass the run's own checkpoints/step_*.pt.")
    model = instantiate(cfg["autoencoder"])
    load_weights(model, state["ema"]["model"], "autoencoder", path)
    return model.eval().requires_grad_(False)


def load_latent_space(cfg: Mapping, run: str | Path = "the run"):
    """A latent run's ``LatentSpace`` (its autoencoder with the weights it trained on, and its
    scale, as ``latent_space`` in its config records them); None for a pixel-space run."""
    record = cfg.get("latent_space")
    if not record:
        return None
    checkpoint = Path(record["checkpoint"])
    if not checkpoint.is_file():
        raise CheckpointError(
            f"{run} is a latent run whose autoencoder checkpoint {checkpoint} is gone: restore "
            f"it (the run's latents and images need those weights).")
    if record.get("scale") is None:
        raise RunError(f"{run} is a latent run that never recorded its latents' scale (it "
                       "stopped before training began): train it again.")
    autoencoder = load_autoencoder(record["run"], checkpoint, key="latent")
    return LatentSpace(autoencoder, float(record["scale"]), int(cfg["data"]["image_size"]))
