"""Synthetic stand-ins for the real datasets, written in the exact on-disk formats
torchvision reads.

Tests, the bench's ``bench.data=synthetic`` mode and quick experiments use these so that
nothing depends on downloaded data, yet every byte still goes through torchvision's own
loaders.

- MNIST and Fashion-MNIST: torchvision decides that a dataset is present when the
  *decompressed* idx files are in ``<root>/<kind>/raw/`` (it checks no checksum on them), so
  ``download=True`` then never touches the network. The ``.gz`` files are written as well, for
  completeness, but their MD5s cannot match torchvision's and are never checked.
- Flowers102: torchvision always checks the MD5 of ``imagelabels.mat`` and ``setid.mat``
  against the originals, which synthetic files cannot match; a test has torchvision expect
  the tiny files' checksums instead (``accept_tiny_flowers`` in the test suite).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.io import savemat

MNIST_KINDS = ("MNIST", "FashionMNIST")

# Seven-segment strokes on a 0..1 square: a cheap way to draw ten distinguishable "digits".
_SEGMENTS = {
    "a": ((0.25, 0.15), (0.75, 0.15)),
    "b": ((0.75, 0.15), (0.75, 0.5)),
    "c": ((0.75, 0.5), (0.75, 0.85)),
    "d": ((0.25, 0.85), (0.75, 0.85)),
    "e": ((0.25, 0.5), (0.25, 0.85)),
    "f": ((0.25, 0.15), (0.25, 0.5)),
    "g": ((0.25, 0.5), (0.75, 0.5)),
}
_DIGIT_SEGMENTS = (
    "abcdef",
    "bc",
    "abged",
    "abgcd",
    "fgbc",
    "afgcd",
    "afgedc",
    "abc",
    "abcdefg",
    "abfgcd",
)


def _digit_image(label: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A jittered seven-segment digit: white strokes on black, like MNIST."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    scale = size * rng.uniform(0.75, 1.0)
    dx, dy = rng.uniform(0, size - scale, size=2)
    width = int(rng.integers(2, 4))
    brightness = int(rng.integers(180, 256))
    for name in _DIGIT_SEGMENTS[label]:
        (x0, y0), (x1, y1) = _SEGMENTS[name]
        points = [(dx + x * scale, dy + y * scale) for x, y in ((x0, y0), (x1, y1))]
        draw.line(points, fill=brightness, width=width)
    return np.asarray(image, dtype=np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0x00, 0x00, type code 0x08 (uint8), number of dims, big-endian sizes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(raw: Path, name: str, array: np.ndarray) -> None:
    data = _idx_bytes(array)
    (raw / name).write_bytes(data)
    with gzip.GzipFile(raw / f"{name}.gz", "wb", mtime=0) as f:
        f.write(data)


def write_tiny_mnist(
    root: str | Path,
    n_train: int = 64,
    n_test: int = 32,
    kind: str = "MNIST",
    seed: int = 0,
) -> Path:
    """Write a tiny MNIST-format dataset under ``root/<kind>/raw`` and return that folder.

    Images are 28x28 uint8 seven-segment digits with random position, size, stroke width and
    brightness; labels cycle through 0..9 so every class appears.
    """
    if kind not in MNIST_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MNIST_KINDS)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    raw = Path(root) / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = (
            np.stack([_digit_image(int(y), rng) for y in labels])
            if n
            else np.zeros((0, 28, 28), np.uint8)
        )
        _write_idx(raw, f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw, f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def _flower_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A coloured disc of petals on a green background, of the given (width, height)."""
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers((20, 80, 20), (80, 160, 80))))
    draw = ImageDraw.Draw(image)
    petal = tuple(int(v) for v in rng.integers(60, 256, size=3))
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    radius = min(width, height) * rng.uniform(0.2, 0.35)
    for angle in np.linspace(0, 2 * np.pi, 6, endpoint=False):
        px, py = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
        r = radius * 0.6
        draw.ellipse((px - r, py - r, px + r, py + r), fill=petal)
    draw.ellipse(
        (cx - radius * 0.4, cy - radius * 0.4, cx + radius * 0.4, cy + radius * 0.4),
        fill=(240, 200, 40),
    )
    return image


def write_tiny_flowers(root: str | Path, n: int = 24, seed: int = 0) -> Path:
    """Write a tiny Flowers102-format dataset under ``root/flowers-102`` and return that folder.

    ``n`` JPEGs of mixed aspect ratios (shorter side 32 px) in ``jpg/``, ``imagelabels.mat``
    (1-based labels, as in the original) and ``setid.mat`` splitting the ids into three equal
    parts for ``trnid`` / ``valid`` / ``tstid``. Load it inside ``accept_tiny_flowers``.
    """
    if n < 6:
        raise ValueError("write_tiny_flowers needs n >= 6 so that every split has two images")
    rng = np.random.default_rng(seed)
    base = Path(root) / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    sizes = ((32, 32), (48, 32), (32, 44))
    for image_id in range(1, n + 1):
        image = _flower_image(rng, sizes[image_id % len(sizes)])
        image.save(base / "jpg" / f"image_{image_id:05d}.jpg", quality=92)
    labels = (np.arange(n) % 102 + 1).astype(np.uint8)[None, :]
    ids = np.arange(1, n + 1, dtype=np.uint16)
    third = n // 3
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(
        base / "setid.mat",
        {
            "trnid": ids[None, :third],
            "valid": ids[None, third : 2 * third],
            "tstid": ids[None, 2 * third :],
        },
    )
    return base


SHAPES = ("circle", "square", "triangle")
_FORMATS = ("png", "jpg", "webp", "bmp")


def _shape_image(shape: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One filled ``shape`` of a random colour, size and place on a random dark background."""
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 70, size=3)))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(120, 256, size=3))
    r = min(width, height) * rng.uniform(0.2, 0.35)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def write_shape_folder(root: str | Path, n: int = 300, labelled: bool = True,
                       seed: int = 0) -> Path:
    """A folder of ``n`` images of filled circles, squares and triangles, as a user's own
    images might be: in one subfolder per shape (``labelled``) or all in the folder, in turns
    png, jpg, webp and bmp, of mixed sizes and aspect ratios (shorter side 32 px or more)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = ((32, 32), (48, 32), (32, 40), (64, 64))
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        folder = root / shape if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        image = _shape_image(shape, rng, sizes[i % len(sizes)])
        image.save(folder / f"{shape}_{i:04d}.{_FORMATS[i % len(_FORMATS)]}")
    return root
