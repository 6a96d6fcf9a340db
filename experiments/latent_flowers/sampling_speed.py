"""Sampling speed of trained runs (and cascades), measured alike: the EMA network, the
midpoint sampler with 10 steps (20 NFE a stage), one batch of N images (default 64) drawn
after one warm-up draw of 4, wall-clock seconds on this machine's threads (OMP_NUM_THREADS),
a latent run's decoding included. Prints one line per run with images/s.

    python experiments/latent_flowers/sampling_speed.py runs/latent_flowers/pixel runs/latent_flowers/latent
    python experiments/latent_flowers/sampling_speed.py runs/cascade_flowers/base+runs/cascade_flowers/sr
"""

from __future__ import annotations

import os
import sys
import time

import torch

from diffusion.sampling.cascade import upsample
from diffusion.sampling.pipeline import DiffusionPipeline


def draw(stages: list[DiffusionPipeline], n: int) -> torch.Tensor:
    images = stages[0](n, steps=10, sampler="flow_midpoint", seed=0, batch_size=n,
                       output_type="pt").images
    if len(stages) > 1:
        images = upsample(images, stages[1:], seed=0, chunk_size=n)
    return images


def main() -> None:
    n = int(os.environ.get("N", "64"))
    for spec in sys.argv[1:]:
        stages = [DiffusionPipeline.from_run(run, device="cpu") for run in spec.split("+")]
        draw(stages, 4)  # warm-up
        start = time.perf_counter()
        images = draw(stages, n)
        seconds = time.perf_counter() - start
        print(f"{spec}: {n} images {tuple(images.shape[1:])} in {seconds:.1f} s, "
              f"{n / seconds:.2f} images/s ({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
