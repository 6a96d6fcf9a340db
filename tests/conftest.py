"""Suite-wide settings and data fixtures."""

import hashlib
import logging
import os
from pathlib import Path

import pytest
from torchvision.datasets import Flowers102

from diffusion.data.synthetic import write_tiny_flowers, write_tiny_mnist

# No test may reach W&B servers or print its banners.
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
# precision=auto is fp32 on every CPU here, so the suite's numbers do not depend on whether
# this CPU has native bf16 (tests of the bf16 choice itself unset it).
os.environ["DIFFUSION_CPU_BF16"] = "0"


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory) -> Path:
    """A data root with tiny MNIST and FashionMNIST (64 train / 32 test images each)."""
    root = tmp_path_factory.mktemp("data")
    for kind in ("MNIST", "FashionMNIST"):
        write_tiny_mnist(root, kind=kind)
    return root


@pytest.fixture
def tiny_flowers_root(tmp_path, monkeypatch) -> Path:
    """A data root with a tiny Flowers102 (24 images, 8 per split) that torchvision accepts."""
    write_tiny_flowers(tmp_path)
    accept_tiny_flowers(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The real datasets (``$DIFFUSION_DATA``, else ``../shared/data``); skips when absent."""
    root = Path(os.environ.get("DIFFUSION_DATA") or Path(__file__).parents[2] / "shared" / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found under {root} (set DIFFUSION_DATA)")
    return root


def accept_tiny_flowers(monkeypatch, root: str | Path) -> None:
    """Make torchvision's Flowers102 accept the ``.mat`` files under ``root`` (test use only)."""
    base = Path(root) / "flowers-102"
    file_dict = dict(Flowers102._file_dict)
    for key in ("label", "setid"):
        filename, _ = file_dict[key]
        file_dict[key] = (filename, hashlib.md5((base / filename).read_bytes()).hexdigest())
    monkeypatch.setattr(Flowers102, "_file_dict", file_dict)


@pytest.fixture(autouse=True)
def _package_loggers_enabled():
    """An in-process Hydra command (``--help``, a composed job) configures logging with
    ``disable_existing_loggers``, which silences the package's loggers created before it:
    every test starts with them enabled, as a fresh process has them."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("diffusion") and isinstance(logger, logging.Logger):
            logger.disabled = False
