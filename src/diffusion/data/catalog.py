"""The datasets the framework ships: torchvision's, each in one class named in conf/data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from diffusion.data.datasets import ImageDataset
from diffusion.data.files import FileLayout, FlowersFiles, MnistFiles, open_files


class TorchvisionDataset(ImageDataset):
    """A dataset that torchvision reads from its files, laid out as ``files`` says."""

    files: ClassVar[FileLayout]

    def load(self, root: Path, split: str, download: bool,
             cache_dir: str | os.PathLike | None) -> Dataset:
        return open_files(self.files, root, split, download, cache_dir)


class MNISTDataset(TorchvisionDataset):
    """Handwritten digits, 28x28 greyscale."""

    name = "mnist"
    channels = 1
    image_size = 28
    num_classes = 10
    splits = ("train", "test")
    train_split = "train"
    eval_split = "test"
    files = MnistFiles(tvd.MNIST)


class FashionMNISTDataset(MNISTDataset):
    """Zalando's clothing images, in MNIST's format and sizes."""

    name = "fashion_mnist"
    files = MnistFiles(tvd.FashionMNIST)


class Flowers102Dataset(TorchvisionDataset):
    """Oxford Flowers 102: RGB photographs of varying sizes; trains on train + val (2040
    images) and is evaluated on test (6149)."""

    name = "flowers102"
    channels = 3
    image_size = None
    num_classes = 102
    splits = ("train", "val", "test", "trainval")
    train_split = "trainval"
    eval_split = "test"
    files = FlowersFiles()
