"""Datasets -> image tensors in [-1, 1], for the trainer, the metrics and the benchmarks.

- ``files``: torchvision's on-disk layouts: where the files are, a cache for read-only roots,
  and the errors that name a missing or damaged file;
- ``datasets``: ``ImageDataset``, the base of every dataset class, with its preprocessing,
  its per-item random flips and the registry behind ``dataset_info`` / ``build_dataset``;
- ``catalog``: the datasets the framework ships (MNIST, FashionMNIST, Flowers102);
- ``image_folder``: ``ImageFolderDataset``, a folder of the user's own images, decoded once
  and cached (``decoded``);
- ``on_device``: ``DeviceDataset``, a whole split held on the training device.

Adding a dataset takes one class and one YAML, no edit here. The class subclasses
``ImageDataset`` (or ``TorchvisionDataset`` with a ``files`` layout), sets ``name``,
``channels``, ``image_size`` (None where sizes vary), ``num_classes``, ``splits``,
``train_split`` and ``eval_split``, and implements ``load(root, split, download, cache_dir)``
returning (image, label) items::

    class Stripes(ImageDataset):
        name, channels, image_size, num_classes = "stripes", 3, 8, 2
        splits, train_split, eval_split = ("train", "test"), "train", "test"

        def load(self, root, split, download, cache_dir):
            return [(stripes(label), label) for label in ...]

The YAML, ``conf/data/stripes.yaml`` (or ``data/stripes.yaml`` in a config folder of your
own, added with ``--config-dir``), names the class in ``_target_`` and repeats its
description for the other groups to interpolate (``model.in_channels: ${data.channels}``);
``diffusion.config.build.build_datasets`` refuses a config whose description differs from the
class's. Copy ``conf/data/mnist.yaml`` and change ``_target_``, ``name``, ``channels``,
``image_size``, ``num_classes`` and the splits. Name lookups (FID references, benchmarks) find
a class once its module is imported: the ones in ``catalog`` always, others once their module is
imported (as building the YAML's ``_target_`` does).
"""

from diffusion.data.catalog import (
    FashionMNISTDataset,
    Flowers102Dataset,
    MNISTDataset,
    TorchvisionDataset,
)
from diffusion.data.datasets import (
    ImageDataset,
    Preprocess,
    SampleKey,
    build_dataset,
    dataset_info,
    dataset_options,
    epoch_generator,
    sample_generator,
    to_model_range,
)
from diffusion.data.files import (
    DatasetCorruptError,
    DatasetNotFoundError,
    resolve_cache,
    resolve_root,
)
from diffusion.data.image_folder import ImageFolderDataset
from diffusion.data.on_device import DeviceDataset

__all__ = [
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DeviceDataset",
    "FashionMNISTDataset",
    "Flowers102Dataset",
    "ImageDataset",
    "ImageFolderDataset",
    "MNISTDataset",
    "Preprocess",
    "SampleKey",
    "TorchvisionDataset",
    "build_dataset",
    "dataset_info",
    "dataset_options",
    "epoch_generator",
    "resolve_cache",
    "resolve_root",
    "sample_generator",
    "to_model_range",
]
