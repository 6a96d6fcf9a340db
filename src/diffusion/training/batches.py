"""Resumable batch order.

Epoch ``e`` visits the dataset in a permutation drawn from ``seed`` and ``e``
alone, so the batch at any global position can be recomputed: a run resumed at
step N sees exactly the batches an uninterrupted run would have seen. Under
DistributedDataParallel ``batch_size`` is the global batch and rank ``r`` of
``world_size`` takes the r-th contiguous slice of each one, so the union over
ranks is the batch a single process would have drawn. For a DataLoader the batches
are ``SampleKey`` lists, which carry the epoch so that each image's random flip is
the same in any worker and after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from diffusion.data import DeviceDataset, SampleKey, epoch_generator
from diffusion.errors import ConfigError


def check_batch(num_samples: int, batch_size: int, world_size: int = 1) -> None:
    """The global batch splits evenly over the processes and fits in the dataset."""
    if batch_size % world_size:
        raise ConfigError(f"data.batch_size ({batch_size}) is the global batch and must be "
                          f"divisible by the number of processes ({world_size}).")
    if num_samples < batch_size:
        raise ConfigError(f"The dataset has {num_samples} images, fewer than one batch of "
                          f"{batch_size}; lower data.batch_size.")


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """Infinite stream of this rank's batches of ``SampleKey``, from global batch
    ``start_batch``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        check_batch(num_samples, batch_size, world_size)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.batches_per_epoch = num_samples // batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=epoch_generator(self.seed, epoch))

    def index_batches(self) -> Iterator[tuple[int, list[int]]]:
        """(epoch, this rank's dataset indices) for each batch from ``start_batch`` on."""
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            indices = self.epoch_indices(epoch)
            for b in range(offset, self.batches_per_epoch):
                start = b * self.batch_size + self.rank * self.local_batch
                yield epoch, indices[start:start + self.local_batch].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for epoch, indices in self.index_batches():
            yield [SampleKey(index, self.seed, epoch) for index in indices]

    def __len__(self) -> int:  # one epoch; the stream itself never ends
        return self.batches_per_epoch


class _Indices(Sampler[list[int]]):
    """``sampler``'s batches as plain indices, for a dataset that takes no ``SampleKey``."""

    def __init__(self, sampler: ResumableBatchSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.sampler.index_batches():
            yield indices

    def __len__(self) -> int:
        return len(self.sampler)


def batch_stream(dataset, sampler: ResumableBatchSampler, device: torch.device,
                 generator: torch.Generator, device_data: DeviceDataset | None = None,
                 num_workers: int = 0) -> Iterator:
    """Endless (x, y) batches in ``sampler``'s order.

    With ``device_data`` (``data.on_device``) the uint8 images (or a latent run's posteriors)
    already sit on the training device and batches are gathered, flipped and scaled (or drawn)
    there, from ``generator``, drawn for the whole global batch and sliced like the indices
    (``device_data.draw``). Otherwise
    a DataLoader runs the dataset's own transforms on ``SampleKey`` batches (each flip
    drawn from the key's seed, epoch and index, whichever worker loads it).
    """
    if device_data is None:
        keyed = getattr(dataset, "accepts_sample_keys", False)  # other datasets take ints
        yield from DataLoader(dataset, batch_sampler=sampler if keyed else _Indices(sampler),
                              num_workers=num_workers,
                              pin_memory=device.type == "cuda",
                              persistent_workers=num_workers > 0,
                              generator=torch.Generator().manual_seed(sampler.seed))
        return
    start = sampler.rank * sampler.local_batch
    part = slice(start, start + sampler.local_batch)
    for _, indices in sampler.index_batches():
        yield device_data.draw(torch.as_tensor(indices, device=device), generator,
                               sampler.batch_size, part)
