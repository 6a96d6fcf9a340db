"""Reflow's data (Liu et al. 2023, "Flow Straight and Fast"): (noise, image) pairs coupled by
a trained model's deterministic ODE, on which the next rectified flow trains with the pair's
noise in place of fresh noise, so that its paths straighten.

``make_pairs`` draws them in shards of ``shard_size``: shard k's noise comes from its own
seeded stream (``chunk_seed(seed, k)``), so every shard is the same whoever draws it and in
whatever order, and a shard already on disk with the same settings is kept: an interrupted run
resumes where it stopped. Each shard is written whole and atomically (``pairs_<k>.pt``:
``noise`` and ``images``, (size, C, H, W) float32, and the settings). A stochastic sampler is
refused: its images are not a function of the noise, so the pairs would not be a coupling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.runtime.files import load_cached, save_torch, writable_folder
from diffusion.sampling.pipeline import chunk_seed
from diffusion.sampling.sampler import SamplerSpec


@dataclass(frozen=True)
class PairShard:
    """One shard on disk: its index, path and how many pairs it holds."""

    index: int
    path: Path
    size: int


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
                          "one (flow_euler, flow_heun, flow_midpoint, ode, edm).")
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
            shards.append(PairShard(index, path, size))
            continue
        noise = torch.randn((size, *shape), generator=torch.Generator().manual_seed(
            chunk_seed(seed, index)))
        images = pipe(size, sampler=spec, noise=noise, batch_size=size,
                      progress=progress).images
        save_torch({"noise": noise, "images": images.float(), "settings": settings}, path)
        shards.append(PairShard(index, path, size))
    return shards


def load_pairs(shards: list[PairShard]) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, images) of every shard, in order."""
    held = [torch.load(s.path, map_location="cpu", weights_only=True) for s in shards]
    return torch.cat([h["noise"] for h in held]), torch.cat([h["images"] for h in held])
