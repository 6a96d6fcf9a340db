"""This framework's side of the benchmark: the production ``Trainer.train_step``, the
``DiffusionPipeline`` the trainer samples with, and the trainer's own data path.

A side is a set of calls the runner times (``sample`` takes the sampler's name). The training
step is fed one fixed synthetic batch already on the device, so that it measures the step
alone; the data path is timed on its own, through the real dataset.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from diffusion.config.build import (
    build_lr_scheduler,
    build_model,
    build_objective,
    build_optimizer,
    build_scheduler,
    build_trainer_config,
)
from diffusion.config.sampler import named_sampler
from diffusion.data import build_dataset, dataset_info, dataset_options
from diffusion.data.synthetic import MNIST_KINDS, write_tiny_mnist
from diffusion.errors import ConfigError, DatasetNotFoundError
from diffusion.runs.records import portable_path
from diffusion.runtime.device import autocast
from diffusion.runtime.seed import seed_everything
from diffusion.sampling.sampler import SamplerSpec
from diffusion.training.trainer import Trainer

log = logging.getLogger(__name__)


class Side:
    """One implementation of the measured operations.

    ``train_step``: one optimizer step (forward, backward, optimizer, EMA) on ``batch_size``
    images; ``sample(name)``: ``sample_n`` images with ``sample_steps`` reverse steps of the
    sampler ``name`` (``bench.sampler``, as ``conf/sampler/<name>.yaml`` states it);
    ``next_batch``: one training batch from the data path; ``ema_update``: one EMA update;
    ``forward_backward`` and ``forward``: the plain model passes whose FLOPs are counted.
    """

    name: str
    model: nn.Module
    info: dict

    def train_step(self) -> None: ...
    def sample(self, name: str) -> None: ...
    def next_batch(self) -> None: ...
    def ema_update(self) -> None: ...
    def forward_backward(self) -> None: ...
    def forward(self) -> None: ...

    def close(self) -> None:
        """Stop data workers and drop references (before the next measurement)."""

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def bench_samplers(bench: DictConfig) -> list[SamplerSpec]:
    """``bench.sampler``: one sampler name or a list of them, each as its group file states
    it (its options and spacing; the step count is ``bench.sample_steps``)."""
    names = bench.sampler if OmegaConf.is_list(bench.sampler) else [bench.sampler]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"bench.sampler must be a sampler name or a list of distinct names, "
                          f"e.g. bench.sampler=[ddim,dpmpp_2m]; got {names!r}.")
    try:
        return [named_sampler(name, key="bench.sampler") for name in names]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def synthetic_batch(batch_size: int, shape: tuple[int, ...], num_classes: int | None,
                    device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of images in [-1, 1] and labels, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, *shape), generator=generator) * 2 - 1
    y = torch.randint(0, num_classes or 1, (batch_size,), generator=generator)
    return x.to(device), y.to(device)


def bench_dataset(cfg: DictConfig, workdir: Path) -> tuple[Dataset, str]:
    """The training split the data path reads, and a sentence saying which it is (its root
    as ``diffusion.runs.records.portable_path`` writes it).

    ``bench.data``: ``real`` needs the dataset; ``synthetic`` writes tiny MNIST-format files
    (same shapes and loaders, made-up digits); ``auto`` uses the real dataset when it can be
    opened and otherwise the synthetic files, saying so.
    """
    data, mode = cfg.data, cfg.bench.data
    if mode not in ("auto", "real", "synthetic"):
        raise ConfigError(f"bench.data must be auto, real or synthetic; got {mode!r}.")
    common = dict(name=data.name, image_size=data.image_size, center_crop=data.center_crop,
                  random_flip=data.random_flip, **dataset_options(data))
    if mode != "synthetic":
        try:
            train = build_dataset(root=data.root, split=data.train_split,
                                  download=data.download, **common)
            root = portable_path(data.root, "<data>")
            return train, f"{data.name} {data.train_split} split under {root}"
        except DatasetNotFoundError as exc:
            if mode == "real":
                raise
            log.warning("%s; timing the data path on synthetic MNIST-format files instead.", exc)
    kind = getattr(getattr(getattr(dataset_info(data.name), "files", None), "cls", None),
                   "__name__", None)
    if kind not in MNIST_KINDS:
        raise ConfigError(f"bench.data=synthetic writes MNIST-format files only; {data.name} "
                          "needs its real files (set paths.data_dir or DIFFUSION_DATA).")
    n = max(1024, 4 * data.batch_size)
    root = workdir / "synthetic-data"
    write_tiny_mnist(root, n_train=n, n_test=0, kind=kind, seed=cfg.seed)
    train = build_dataset(root=root, split="train", download=False, cache_dir=workdir, **common)
    return train, f"synthetic {kind}-format files ({n} images)"


class OurSide(Side):
    """The framework as ``python -m diffusion.train`` runs it, built from the same config."""

    name = "ours"

    def __init__(self, cfg: DictConfig, train_set: Dataset, device: torch.device,
                 workdir: Path):
        self.cfg = cfg
        trainer_cfg = build_trainer_config(cfg)
        seed_everything(cfg.seed)
        conditional = cfg.model.get("num_classes") is not None
        scheduler = build_scheduler(cfg)
        self.trainer = Trainer(
            build_model(cfg), scheduler, build_optimizer(cfg), train_set,
            trainer_cfg, batch_size=cfg.data.batch_size, run_dir=workdir / "run",
            lr_scheduler=build_lr_scheduler(cfg),
            seed=cfg.seed, num_workers=cfg.data.num_workers, conditional=conditional,
            on_device=cfg.data.on_device, objective=build_objective(cfg, scheduler))
        self.model = self.trainer.model.train()
        self.device = self.trainer.device
        x, y = synthetic_batch(cfg.data.batch_size, self.trainer.sample_shape,
                               cfg.model.get("num_classes"), device, cfg.seed)
        self._batch = (x, y)
        self._fixed = itertools.repeat(self._batch)
        self.pipeline = self.trainer.pipeline()
        self.samplers = {spec.name: spec.build(self.pipeline.scheduler)
                         for spec in bench_samplers(cfg.bench)}
        self._data = None
        self.info = {
            "model": cfg.model._target_.rsplit(".", 1)[-1],
            "optimizer": type(self.trainer.optimizer).__name__,
            "optimizer_impl": _optimizer_impl(self.trainer.optimizer),
            "ema_every": trainer_cfg.ema_every,
            "compile": trainer_cfg.compile,
            "channels_last": trainer_cfg.channels_last,
            "data_path": "on-device uint8" if cfg.data.on_device else
                         f"DataLoader, {cfg.data.num_workers} worker(s)",
        }

    def train_step(self) -> None:
        self.trainer.train_step(self._fixed)

    def sample(self, name: str) -> None:
        bench = self.cfg.bench
        self.pipeline(bench.sample_n, steps=bench.sample_steps, sampler=self.samplers[name],
                      generator=torch.Generator().manual_seed(self.cfg.seed))

    def next_batch(self) -> None:
        if self._data is None:
            self._data = self.trainer.batches(0)  # the trainer's own data path
        next(self._data)

    def ema_update(self) -> None:
        ema = self.trainer.ema
        ema.update(self.trainer.model, ema.update_every)

    def forward_backward(self) -> None:
        x, y = self._batch
        t = torch.randint(0, self.trainer.num_train_timesteps, (x.shape[0],), device=x.device)
        y = y if self.trainer.conditional else None
        with autocast(self.device, self.trainer.precision):
            out = self.model(x, t, y)
        out.float().square().mean().backward()
        self.trainer.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward(self) -> None:
        n = self.cfg.bench.sample_n
        x = torch.randn((n, *self.trainer.sample_shape), device=self.device)
        with autocast(self.device, self.trainer.precision):
            self.trainer.ema.model(x, torch.full((n,), 500, device=self.device))

    def close(self) -> None:
        self._data = None


def _optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    if group.get("foreach"):
        return "foreach"
    return "default" if group.get("foreach") is None else "for-loop"
