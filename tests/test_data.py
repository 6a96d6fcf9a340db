"""Datasets, preprocessing, missing-data errors, read-only roots and the two batch paths."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import ClassVar

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import MNIST

from diffusion.config.build import build_datasets
from diffusion.data import (
    DatasetNotFoundError,
    DeviceDataset,
    ImageDataset,
    SampleKey,
    build_dataset,
    dataset_info,
    resolve_root,
)
from diffusion.data.synthetic import write_tiny_mnist
from diffusion.errors import ConfigError
from diffusion.training.batches import ResumableBatchSampler, batch_stream
from hydra_utils import compose_config, debug_overrides
from test_train import run_training

MNIST_FILES = [filename for filename, _ in MNIST.resources]
UNREACHABLE = ["http://127.0.0.1:9/"]  # refused at once: no test touches the network


@pytest.fixture
def offline(monkeypatch):
    for name in ("MNIST", "FashionMNIST"):
        monkeypatch.setattr(f"torchvision.datasets.{name}.mirrors", UNREACHABLE)
    monkeypatch.setattr("torchvision.datasets.Flowers102._download_url_prefix", UNREACHABLE[0])


def make_read_only(path):
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def make_writable(path):
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize(("split", "n"), [("train", 64), ("test", 32)])
def test_mnist_like_items(tiny_mnist_root, name, split, n):
    data = build_dataset(name, root=tiny_mnist_root, split=split)
    assert len(data) == n and data.channels == 1 and data.image_size == 28
    x, y = data[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() <= 1 and x.max() > 0
    assert isinstance(y, int) and y == 3
    # Scaling is exact: uint8 v -> v / 127.5 - 1.
    torch.testing.assert_close(x[0], data.source.data[3].float() / 127.5 - 1, rtol=0, atol=0)


def test_resize_crop_flip(tiny_mnist_root):
    data = build_dataset(
        "mnist", root=tiny_mnist_root, image_size=32, center_crop=True, random_flip=True
    )
    assert data.image_size == 32 and data[0][0].shape == (1, 32, 32)
    torch.manual_seed(0)
    draws = torch.stack([data[5][0] for _ in range(40)])
    assert len(torch.unique(draws, dim=0)) == 2  # the image and its mirror


def test_flowers_splits_and_rgb(tiny_flowers_root):
    trainval = build_dataset("flowers102", root=tiny_flowers_root, image_size=24, center_crop=True)
    assert trainval.split == "trainval" and len(trainval) == 16
    x, y = trainval[1]
    assert x.shape == (3, 24, 24) and -1 <= x.min() and x.max() <= 1 and 0 <= y < 102
    assert (
        len(
            build_dataset(
                "flowers102", root=tiny_flowers_root, split="test", image_size=24, center_crop=True
            )
        )
        == 8
    )
    with pytest.raises(ValueError, match="center_crop"):
        build_dataset("flowers102", root=tiny_flowers_root, image_size=24)


def test_bad_names_list_the_choices(tiny_mnist_root):
    with pytest.raises(ValueError, match="mnist, fashion_mnist, flowers102"):
        build_dataset("cifar10", root=tiny_mnist_root)
    with pytest.raises(ValueError, match="train, test"):
        build_dataset("mnist", root=tiny_mnist_root, split="val")
    assert dataset_info("flowers102").train_split == "trainval"


class Stripes(ImageDataset):
    """Vertical (label 0) or horizontal (label 1) stripes, made in memory: a dataset that
    exists only in this file."""

    name = "stripes"
    channels, image_size, num_classes = 3, 8, 2
    splits, train_split, eval_split = ("train", "test"), "train", "test"
    loaded: ClassVar[list[str]] = []  # the splits built, in order

    def load(self, root, split, download, cache_dir):
        Stripes.loaded.append(split)
        lines = (torch.arange(8) % 2 * 255).to(torch.uint8)
        images = [lines.expand(3, 8, 8), lines[:, None].expand(3, 8, 8)]
        return [(images[i % 2].clone(), i % 2) for i in range(32 if split == "train" else 8)]


STRIPES_YAML = """\
_target_: {target}
name: stripes
channels: 3
image_size: 8
num_classes: 2
random_flip: true
train_split: train
val_split: test
batch_size: 8
num_workers: 0
on_device: false
"""


def test_a_new_dataset_is_one_class_and_one_yaml(tmp_path):
    """The class above and a YAML naming it train through the entry point's code, with no
    table to edit."""
    target = f"{Stripes.__module__}.{Stripes.__qualname__}"
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "stripes.yaml").write_text(STRIPES_YAML.format(target=target))
    Stripes.loaded.clear()
    run_dir, summary = run_training(
        tmp_path, tmp_path / "data", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "data=stripes", "model=basic", "model.base_channels=8", "trainer.max_steps=2")
    assert summary["step"] == 2 and Stripes.loaded == ["train", "test"]
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.data._target_ == target and saved.model.in_channels == 3


@pytest.mark.parametrize(("override", "message"), [
    ("data.channels=3", "data.channels is 3 but diffusion.data.MNISTDataset has 1; "),
    ("data.num_classes=12", "data.num_classes is 12 but diffusion.data.MNISTDataset has 10; "),
    ("data.name=fashion_mnist", "data.name is 'fashion_mnist' but diffusion.data.MNISTDataset "),
    ("data.train_split=val", "Invalid data config: mnist has no split 'val': choose one of "
                             "train, test"),
    ("+data.resize=32", "Invalid data config: "),
])
def test_data_config_errors_are_one_sentence(tiny_mnist_root, override, message):
    cfg = compose_config(debug_overrides(tiny_mnist_root, override))
    with pytest.raises(ConfigError) as caught:
        build_datasets(cfg.data)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_config_without_a_target_builds_its_dataset_by_name(tiny_mnist_root):
    """Run folders written before data configs named their class still load."""
    cfg = compose_config(debug_overrides(tiny_mnist_root, "~data._target_"))
    train, val = build_datasets(cfg.data)
    assert type(train).__name__ == "MNISTDataset" and len(train) == 64 and len(val) == 32
    cfg = compose_config(debug_overrides(tiny_mnist_root, "~data._target_", "data.name=cifar"))
    with pytest.raises(ConfigError, match=r"^data\._target_ is missing: "):
        build_datasets(cfg.data)


def test_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
    assert resolve_root() == tmp_path
    monkeypatch.delenv("DIFFUSION_DATA")
    assert resolve_root() == resolve_root("data") == resolve_root(os.path.abspath("data"))


def test_missing_data_says_which_files_to_put_where(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset("mnist", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert time.monotonic() - start < 30
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "downloading failed" in message and "\n" not in message
    assert socket.getdefaulttimeout() is None  # the download timeout was put back

    with pytest.raises(DatasetNotFoundError, match="downloading is off"):
        build_dataset("fashion_mnist", root=tmp_path / "data", download=False)
    with pytest.raises(DatasetNotFoundError, match="jpg/ folder.*imagelabels.mat"):
        build_dataset(
            "flowers102",
            root=tmp_path / "data",
            cache_dir=tmp_path / "cache",
            image_size=32,
            center_crop=True,
        )


def test_read_only_root_is_unpacked_into_the_cache_once(tmp_path, monkeypatch, offline):
    """Only the archives are there, read-only: they are linked and unpacked into the cache."""
    raw = write_tiny_mnist(tmp_path / "ro")
    resources = []
    for name in MNIST_FILES:
        (raw / name.removesuffix(".gz")).unlink()
        resources.append((name, hashlib.md5((raw / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(MNIST, "resources", resources)  # torchvision accepts the tiny archives
    make_read_only(tmp_path / "ro")
    try:
        cache = tmp_path / "cache"
        data = build_dataset("mnist", root=tmp_path / "ro", cache_dir=cache)
        assert len(data) == 64 and data[0][0].shape == (1, 28, 28)
        assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)  # root untouched
        unpacked = list(cache.glob("*/MNIST/raw/train-images-idx3-ubyte"))
        assert len(unpacked) == 1 and not unpacked[0].is_symlink()
        mtime = unpacked[0].stat().st_mtime_ns
        assert (
            len(build_dataset("mnist", root=tmp_path / "ro", split="test", cache_dir=cache)) == 32
        )
        assert unpacked[0].stat().st_mtime_ns == mtime  # done once
    finally:
        make_writable(tmp_path / "ro")


def test_read_only_root_with_unpacked_files_is_used_in_place(tiny_mnist_root, tmp_path):
    root = shutil.copytree(tiny_mnist_root, tmp_path / "ro")
    make_read_only(root)
    try:
        data = build_dataset("mnist", root=root, cache_dir=tmp_path / "cache")
        assert len(data) == 64 and not (tmp_path / "cache").exists()
    finally:
        make_writable(root)


def truncate(path, keep):
    """Cut ``path`` to ``keep`` bytes; returns (original size, kept size)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return len(data), keep


def test_truncated_unpacked_mnist_file_is_named(tmp_path, offline):
    raw = write_tiny_mnist(tmp_path / "data")
    size, kept = truncate(raw / "train-images-idx3-ubyte", 1000)
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset("mnist", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(f"MNIST file {raw / 'train-images-idx3-ubyte'} is corrupt or "
                              f"truncated (expected {size} bytes, found {kept}): ")
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


@pytest.mark.parametrize("read_only", [False, True])
def test_truncated_mnist_archive_is_named(tmp_path, monkeypatch, offline, read_only):
    """All four archives are there but one is cut short: the error names it, not the folder
    (through the cache's links to a read-only root too)."""
    raw = write_tiny_mnist(tmp_path / "data")
    resources = []
    for name in MNIST_FILES:
        (raw / name.removesuffix(".gz")).unlink()
        resources.append((name, hashlib.md5((raw / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(MNIST, "resources", resources)  # torchvision accepts the tiny archives
    truncate(raw / "train-labels-idx1-ubyte.gz", 20)
    if read_only:
        make_read_only(tmp_path / "data")
    try:
        with pytest.raises(DatasetNotFoundError) as caught:
            build_dataset("mnist", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    finally:
        make_writable(tmp_path / "data")
    message = str(caught.value)
    assert message.startswith(f"MNIST file {raw / 'train-labels-idx1-ubyte.gz'} is corrupt or "
                              "truncated (MD5 ")
    assert "\n" not in message


def test_corrupt_flowers_mat_is_named(tiny_flowers_root, tmp_path, offline):
    setid = tiny_flowers_root / "flowers-102" / "setid.mat"
    truncate(setid, 100)
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset("flowers102", root=tiny_flowers_root, cache_dir=tmp_path / "cache",
                      image_size=16, center_crop=True)
    assert str(caught.value).startswith(f"Flowers102 file {setid} is corrupt or truncated (MD5 ")


def test_cli_truncated_data_file_is_one_sentence_and_exit_1(tmp_path):
    raw = write_tiny_mnist(tmp_path / "data")
    truncate(raw / "t10k-labels-idx1-ubyte", 12)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFUSION_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "diffusion.train", "logger=none", "trainer=debug", "sampler.steps=2",
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MNIST file {raw / 't10k-labels-idx1-ubyte'} is corrupt")


# ---------------------------------------------------------------------------------------------
# The trainer's two batch paths (DataLoader and on-device) give the same batches' distribution
# ---------------------------------------------------------------------------------------------


def batches(data, n, seed=1, on_device=False, start_batch=0, rank=0, world_size=1,
            batch_size=16, num_workers=0):
    """The first ``n`` batches the trainer would draw."""
    sampler = ResumableBatchSampler(len(data), batch_size, seed=seed, start_batch=start_batch,
                                    rank=rank, world_size=world_size)
    device_data = DeviceDataset.from_dataset(data, "cpu") if on_device else None
    stream = batch_stream(data, sampler, torch.device("cpu"),
                          torch.Generator().manual_seed(seed), device_data, num_workers)
    return [next(stream) for _ in range(n)]


def test_preprocessed_tensor_matches_items(tiny_mnist_root, tiny_flowers_root):
    for data in (
        build_dataset("mnist", root=tiny_mnist_root, image_size=20, center_crop=True),
        build_dataset("flowers102", root=tiny_flowers_root, image_size=16, center_crop=True),
    ):
        images, labels = data.preprocessed()
        assert images.dtype == torch.uint8 and images.shape == (
            len(data),
            data.channels,
            *[data.image_size] * 2,
        )
        items = [data[i] for i in range(len(data))]
        torch.testing.assert_close(
            images.float() / 127.5 - 1, torch.stack([x for x, _ in items]), rtol=0, atol=0
        )
        assert labels.tolist() == [y for _, y in items]


def test_same_batches_without_flip(tiny_mnist_root):
    data = build_dataset("mnist", root=tiny_mnist_root, image_size=32)
    for (x, y), (x_dev, y_dev) in zip(batches(data, 8, seed=3),
                                      batches(data, 8, seed=3, on_device=True), strict=True):
        assert x_dev.dtype == torch.float32 and x_dev.shape == (16, 1, 32, 32)
        assert torch.equal(x, x_dev) and torch.equal(y, y_dev)


def flip_fraction(stream, reference):
    """Share of images that are the mirror of their reference (labels are dataset indices)."""
    flipped = total = 0
    for x, index in stream:
        ref = reference[index]
        is_flip = (x == ref.flip(-1)).flatten(1).all(1)
        assert (is_flip | (x == ref).flatten(1).all(1)).all()
        flipped, total = flipped + int(is_flip.sum()), total + len(x)
    return flipped / total


def test_flip_distribution_matches(tiny_mnist_root):
    """Same order, flip rate and per-pixel statistics on both paths; deterministic in the seed."""
    data = build_dataset("mnist", root=tiny_mnist_root, random_flip=True)
    data.source.targets = torch.arange(len(data))  # labels become indices, to find references
    reference = data.preprocessed()[0].float() / 127.5 - 1
    torch.manual_seed(0)
    loader_batches = batches(data, 120)
    dev_batches = batches(data, 120, on_device=True)

    for (_, y), (_, y_dev) in zip(loader_batches, dev_batches, strict=True):
        assert torch.equal(y, y_dev)  # the same images in the same order
    f_loader, f_dev = flip_fraction(loader_batches, reference), flip_fraction(dev_batches,
                                                                              reference)
    assert abs(f_loader - 0.5) < 0.06 and abs(f_dev - 0.5) < 0.06
    x_loader = torch.cat([x for x, _ in loader_batches])
    x_dev = torch.cat([x for x, _ in dev_batches])
    torch.testing.assert_close(x_dev.mean(), x_loader.mean())  # flips keep each image's mean
    assert (x_dev.mean(0) - x_loader.mean(0)).abs().max() < 0.25
    assert (x_dev.std(0) - x_loader.std(0)).abs().mean() < 0.05

    again = batches(data, 8, on_device=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(again, dev_batches, strict=False))
    other = batches(data, 1, seed=2, on_device=True)
    assert not torch.equal(other[0][1], dev_batches[0][1])
    assert not torch.equal(dev_batches[0][1], dev_batches[4][1])  # reshuffled each epoch
    assert sorted(torch.cat([y for _, y in dev_batches[4:8]]).tolist()) == list(range(64))


def test_batch_order_resumes_and_shards(tiny_mnist_root):
    data = build_dataset("mnist", root=tiny_mnist_root, split="test")  # 32 images
    data.source.targets = torch.arange(len(data))
    full = [y for _, y in batches(data, 6, batch_size=8)]
    resumed = [y for _, y in batches(data, 3, batch_size=8, start_batch=3)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[3:], strict=True))
    for on_device in (False, True):
        shards = [batches(data, 6, batch_size=8, rank=r, world_size=2, on_device=on_device)
                  for r in range(2)]
        for step, expected in enumerate(full):
            assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), expected)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        ResumableBatchSampler(len(data), 64)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        ResumableBatchSampler(len(data), 9, world_size=2)


def test_flips_depend_on_seed_epoch_and_index_only(tiny_mnist_root):
    """A resumed run with DataLoader workers flips every image as an uninterrupted run did."""
    data = build_dataset("mnist", root=tiny_mnist_root, split="test", random_flip=True)
    data.source.targets = torch.arange(len(data))  # labels become indices
    reference = data.preprocessed()[0].float() / 127.5 - 1
    torch.manual_seed(0)
    full = batches(data, 8, batch_size=8)  # two epochs of 32 images
    torch.manual_seed(1)  # the global RNG plays no part
    for num_workers, start_batch in ((2, 0), (2, 5), (0, 3)):
        resumed = batches(data, 8 - start_batch, batch_size=8, start_batch=start_batch,
                          num_workers=num_workers)
        for (x, y), (x_full, y_full) in zip(resumed, full[start_batch:], strict=True):
            assert torch.equal(y, y_full) and torch.equal(x, x_full), (num_workers, start_batch)

    flips = torch.zeros(2, len(data), dtype=torch.bool)  # [epoch, index]
    for b, (x, y) in enumerate(full):
        flips[b // 4, y] = (x != reference[y]).flatten(1).any(1)
    assert 0 < flips[0].sum() < len(data) and not torch.equal(flips[0], flips[1])
    x, _ = data[SampleKey(index=5, seed=1, epoch=1)]
    assert torch.equal(x, reference[5].flip(-1) if flips[1, 5] else reference[5])
