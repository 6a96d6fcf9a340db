"""Resumable batch order.

Epoch ``e`` visits the dataset in a permutation drawn from ``seed`` and ``e``
alone, so the batch at any global position can be recomputed: a run resumed at
step N sees exactly the batches an uninterrupted run would have seen. Under
DistributedDataParallel each rank takes a disjoint slice of every permutation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from diffusion.data import epoch_generator


class ResumableBatchSampler(Sampler[list[int]]):
    """Infinite stream of index batches, starting at global batch ``start_batch``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        per_rank = num_samples // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"The dataset has {num_samples} images, fewer than one batch of {batch_size} "
                f"per process ({world_size} process(es)); lower data.batch_size."
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = per_rank // batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        order = torch.randperm(self.num_samples, generator=epoch_generator(self.seed, epoch))
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:usable][self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            indices = self.epoch_indices(epoch)
            for b in range(offset, self.batches_per_epoch):
                yield indices[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the stream itself never ends
        return self.batches_per_epoch
