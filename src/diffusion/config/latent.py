"""``latent=<autoencoder run>``: a diffusion run in the latent space of an autoencoder that
``python -m diffusion.train_autoencoder`` trained (Rombach et al. 2022).

``fit_to_latent`` (before any other check) gives the network the latents' shape and records
what the run depends on in ``latent_space``: the autoencoder run, the checkpoint whose weights
encode the data (its newest when the run starts; a resume or rerun keeps the recorded one),
the latents' shape and, once the data is encoded, the scale that brings them to unit variance
(``latent_datasets``). The data config stays the images', so the FID reference, the grids and
the evaluation are in pixels, as for a pixel-space run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from diffusion.data.datasets import data_key
from diffusion.data.latents import latent_datasets
from diffusion.errors import ConfigError
from diffusion.models.latent import LatentSpace
from diffusion.runs.load import load_autoencoder, newest_checkpoint, read_config


def fit_to_latent(cfg: DictConfig) -> None:
    """With ``cfg.latent`` set: the model's ``in_channels`` and ``image_size`` become the
    latents' and ``cfg.latent_space`` records the autoencoder (see the module docstring);
    without it, nothing. One sentence for a folder that is not an autoencoder run, an
    autoencoder of other images, or a resume that names another one."""
    run = cfg.get("latent")
    record = cfg.get("latent_space")
    if not run:
        if record:
            raise ConfigError("this run trained in an autoencoder's latent space "
                              f"({record.run}); latent=null cannot change that: keep latent=.")
        return
    folder = Path(str(run)).resolve()
    if record and Path(record.run) != folder:
        raise ConfigError(f"this run trained on the latents of {record.run}, not {run}: "
                          "a run keeps its autoencoder (start a new run for another).")
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"latent={run} is not a run folder (no config.yaml in it): pass the "
                          "folder python -m diffusion.train_autoencoder printed, e.g. "
                          "runs/autoencoder-<data>/<date>_<time>.")
    ae = read_config(folder, key="latent")
    if "autoencoder" not in ae:
        raise ConfigError(f"latent={run} is not an autoencoder run (its config has no "
                          "autoencoder): pass a folder that python -m diffusion.train_autoencoder "
                          "wrote.")
    node, ae_data = ae["autoencoder"], ae.get("data") or {}
    for key in ("channels", "image_size"):
        if ae_data.get(key) != cfg.data.get(key):
            raise ConfigError(
                f"the autoencoder of latent={run} was trained on {ae_data.get('name')} images "
                f"with {key} {ae_data.get(key)}, but data.{key} is {cfg.data.get(key)}: set "
                f"data.{key}={ae_data.get(key)} or train an autoencoder on these images.")
    factor = 2 ** (len(node["channel_mult"]) - 1)
    shape = [int(node["latent_channels"]), cfg.data.image_size // factor,
             cfg.data.image_size // factor]
    checkpoint = (Path(record.checkpoint) if record else newest_checkpoint(
        folder, "let diffusion.train_autoencoder reach its first checkpoint (eval_every)"))
    with open_dict(cfg):
        cfg.latent = str(folder)
        cfg.model.in_channels, cfg.model.image_size = shape[0], shape[1]
        if not record:
            cfg.latent_space = {"run": str(folder), "checkpoint": str(checkpoint.resolve()),
                                "shape": shape, "factor": factor, "scale": None}


def latent_data(cfg: DictConfig, train_set, val_set, device):
    """(train, validation, ``LatentSpace``): the run's datasets encoded by its autoencoder
    (cached, see ``diffusion.data.latents``), and the scale recorded in ``cfg.latent_space``
    (computed from the training latents, unless the run recorded it already)."""
    record = cfg.latent_space
    autoencoder = load_autoencoder(record.run, record.checkpoint).to(device)
    space = LatentSpace(autoencoder, 1.0, cfg.data.image_size)
    train, val, scale = latent_datasets(
        space, record.checkpoint, train_set, val_set, data_key(cfg.data), scale=record.scale,
        cache_dir=cfg.data.get("cache_dir"), num_workers=cfg.data.get("num_workers", 0))
    with open_dict(cfg):
        cfg.latent_space.scale = scale
    space.scale = scale
    return train, val, space
