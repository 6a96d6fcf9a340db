"""Reflow's data (Liu et al. 2023, "Flow Straight and Fast"): (noise, image) pairs coupled by
a trained model's deterministic ODE, on which the next rectified flow trains with the pair's
noise in place of fresh noise, so that its paths straighten.

``make_pairs`` draws them in shards of ``shard_size``: shard k's noise comes from its own
seeded stream (``chunk_seed(seed, k)``), so every shard is the same whoever draws it and in
whatever order, and a shard already on disk with the same settings is kept: an interrupted run
resumes where it stopped. Each shard is written whole and atomically (``pairs_<k>.pt``:
``noise`` and ``images``, (size, C, H, W) float32, the settings, and its ``cost``: seconds and
network evaluations a pair, which ``pairs_cost`` sums into the reflow's budget). A stochastic
sampler is refused: its images are not a function of the noise, so the pairs would not be a
coupling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.runtime.files import load_cached, save_torch, writable_folder
from diffusion.sampling.pipeline import chunk_seed
from diffusion.sampling.sampler import SamplerSpec


@dataclass(frozen=True)
class PairShard:
    """One shard on disk: its index, path, how many pairs it holds and what drawing them
    took (``cost``: seconds, network evaluations a pair)."""

    index: int
    path: Path
    size: int
    cost: dict = field(default_factory=dict, compare=False)


def shard_settings(spec: SamplerSpec, seed: int, checkpoint: str) -> dict:
    """What a shard's pairs depend on, stored in it and compared on resume."""
    return {"sampler": spec.name, "steps": spec.steps, "options": dict(spec.options),
            "seed": seed, "checkpoint": checkpoint}


def make_pairs(pipe, n: int, out: str | Path, *, spec: SamplerSpec, shard_size: int = 1000,
               seed: int = 0, checkpoint: str = "", progress: bool = False) -> list[PairShard]:
    """``n`` (noise, image) pairs from ``pipe`` with the deterministic sampler ``spec``, in
    shards of ``shard_size`` under ``out``; see the module docstring. Returns the shards."""
    check_int("pairs", n)
    check_int("shard_size", shard_size)
    if spec.stochastic:
        raise ConfigError(f"reflow couples each noise with the image the model's ODE maps it to; "
                          f"sampler={spec.name} draws noise at its steps: use a deterministic "
                          "one (flow_euler, flow_heun, flow_midpoint, flow_dpmpp_2m, ode, edm).")
    folder = writable_folder(out, "pass a folder you can write for the pairs")
    settings = shard_settings(spec, seed, checkpoint)
    shape = pipe.sample_shape
    shards = []
    for index, start in enumerate(range(0, n, shard_size)):
        size = min(shard_size, n - start)
        path = folder / f"pairs_{index:05d}.pt"
        held = load_cached(path)
        if held is not None:
            if held.get("settings") != settings or len(held["noise"]) != size:
                raise ConfigError(f"{path} holds pairs drawn with other settings "
                                  f"({held.get('settings')}): use another folder, or delete "
                                  "it to draw them again.")
            shards.append(PairShard(index, path, size, held.get("cost", {})))
            continue
        noise = torch.randn((size, *shape), generator=torch.Generator().manual_seed(
            chunk_seed(seed, index)))
        calls: list[int] = []
        hook = pipe.model.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        started = time.perf_counter()
        try:
            images = pipe(size, sampler=spec, noise=noise, batch_size=size,
                          progress=progress).images
        finally:
            hook.remove()
        cost = {"seconds": round(time.perf_counter() - started, 2), "nfe": len(calls)}
        save_torch({"noise": noise, "images": images.float(), "settings": settings,
                    "cost": cost}, path)
        shards.append(PairShard(index, path, size, cost))
    return shards


def pairs_cost(shards: list[PairShard]) -> dict:
    """What drawing ``shards`` took: seconds (summed over the shards, whichever call drew
    them) and network evaluations a pair (``nfe``)."""
    costs = [s.cost for s in shards]
    return {"n": sum(s.size for s in shards),
            "seconds": round(sum(c.get("seconds", 0.0) for c in costs), 1),
            "nfe": max((c.get("nfe", 0) for c in costs), default=0)}


def load_pairs(shards: list[PairShard]) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, images) of every shard, in order."""
    held = [torch.load(s.path, map_location="cpu", weights_only=True) for s in shards]
    return torch.cat([h["noise"] for h in held]), torch.cat([h["images"] for h in held])


def pair_shards(folder: str | Path) -> list[PairShard]:
    """The shards ``make_pairs`` wrote under ``folder``, in order; see ``read_shards``."""
    return [shard for shard, _ in read_shards(folder)]


def read_shards(folder: str | Path) -> list[tuple[PairShard, dict]]:
    """Each shard ``make_pairs`` wrote under ``folder``, in order, with what it holds (read
    once); one sentence when there are none, one is missing or one cannot be read
    (``diffusion.reflow`` draws it again)."""
    paths = sorted(Path(folder).glob("pairs_*.pt"))
    if not paths:
        raise ConfigError(f"pairs={folder} holds no pairs_*.pt shards: pass the pairs folder "
                          "that python -m diffusion.reflow wrote (<out>/pairs).")
    again = "run python -m diffusion.reflow again with the same settings, which draws it anew"
    shards = []
    for index, path in enumerate(paths):
        if path.name != f"pairs_{index:05d}.pt":
            raise ConfigError(f"{folder} lacks pairs_{index:05d}.pt: {again}.")
        held = load_cached(path)
        if held is None:
            raise ConfigError(f"{path} was damaged and is removed: {again}.")
        shards.append((PairShard(index, path, len(held["noise"]), held.get("cost", {})), held))
    return shards


class PairDataset(torch.utils.data.Dataset):
    """Reflow's training set: ``(image, 0, noise)`` items from the shards under ``folder``,
    so the trainer noises each image with its own noise (``Trainer._noised``) instead of a
    fresh draw. ``like`` (the run's own dataset) lends its description (name, channels,
    image size, classes: the FID reference and the model's shape stay the dataset's), and
    the pairs must have its image shape."""

    accepts_sample_keys = False

    def __init__(self, folder: str | Path, like=None):
        held = [contents for _, contents in read_shards(folder)]
        self.noise = torch.cat([h["noise"] for h in held])
        self.images = torch.cat([h["images"] for h in held])
        for key in ("name", "channels", "image_size", "num_classes"):
            setattr(self, key, getattr(like, key, None))
        if like is not None and len(like):
            shape = tuple(like[0][0].shape)
            if tuple(self.images.shape[1:]) != shape:
                raise ConfigError(f"pairs={folder} holds images of shape "
                                  f"{tuple(self.images.shape[1:])} but the run's data are "
                                  f"{shape}: pass the pairs of a run on the same data.")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], 0, self.noise[index]
