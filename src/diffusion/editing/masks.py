"""Inpainting masks: 1 where a pixel is filled in, 0 where it is kept (white = fill in, as in
most image editors and diffusers' inpainting pipelines).

Seeded generators of (n, 1, H, W) float masks, by name (``MASKS``), and PNG files:

- ``center``: the central square of half the side;
- ``half``: the right half;
- ``random_boxes``: one to four axis-aligned boxes per image, sides from 1/8 to 1/2 of the image;
- ``strokes``: one to four free-form brush strokes per image (random polylines drawn with a
  round brush), as in the free-form masks of DeepFill v2 and LaMa.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

Size = tuple[int, int]


def center(n: int, size: Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """The central square of half the side, for every image."""
    h, w = size
    mask = torch.zeros(n, 1, h, w)
    mask[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 1
    return mask


def half(n: int, size: Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """The right half, for every image."""
    h, w = size
    mask = torch.zeros(n, 1, h, w)
    mask[..., w // 2:] = 1
    return mask


def _uniform(generator, low: float, high: float, shape=()) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def random_boxes(n: int, size: Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """One to four random boxes per image."""
    h, w = size
    mask = torch.zeros(n, 1, h, w)
    for i in range(n):
        for _ in range(int(torch.randint(1, 5, (), generator=generator))):
            bh = int(_uniform(generator, h / 8, h / 2)) or 1
            bw = int(_uniform(generator, w / 8, w / 2)) or 1
            top = int(torch.randint(0, h - bh + 1, (), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (), generator=generator))
            mask[i, 0, top:top + bh, left:left + bw] = 1
    return mask


def _segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of each of ``points`` (P, 2) to the segment from ``a`` to ``b``."""
    ab = b - a
    s = ((points - a) @ ab / ab.dot(ab).clamp_min(1e-9)).clamp(0, 1)
    return (points - a - s[:, None] * ab).norm(dim=1)


def strokes(n: int, size: Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """One to four brush strokes per image: polylines of 2 to 5 segments, each up to half the
    image long, drawn with a round brush 1/12 to 1/6 of the image wide."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pixels = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    scale = float(min(h, w))
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    for i in range(n):
        for _ in range(int(torch.randint(1, 5, (), generator=generator))):
            radius = float(_uniform(generator, scale / 24, scale / 12))
            point = torch.rand(2, generator=generator) * torch.tensor([h, w])
            for _ in range(int(torch.randint(2, 6, (), generator=generator))):
                angle = float(_uniform(generator, 0, 2 * torch.pi))
                length = float(_uniform(generator, scale / 8, scale / 2))
                step = length * torch.tensor([torch.sin(torch.tensor(angle)),
                                              torch.cos(torch.tensor(angle))])
                end = (point + step).clamp(torch.zeros(2), torch.tensor([h, w]).float())
                mask[i] |= _segment_distance(pixels, point, end) <= radius
                point = end
    return mask.float().reshape(n, 1, h, w)


MASKS: dict[str, Callable[..., torch.Tensor]] = {
    "center": center, "half": half, "random_boxes": random_boxes, "strokes": strokes}


def make_mask(kind: str, n: int, size: Size, seed: int = 0) -> torch.Tensor:
    """``n`` masks of generator ``kind`` (see ``MASKS``), seeded by ``seed``."""
    if kind not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)} or a PNG file; got {kind!r}.")
    return MASKS[kind](n, size, torch.Generator().manual_seed(seed))


def load_mask(path: str | Path, size: Size) -> torch.Tensor:
    """A (1, 1, H, W) mask from an image file: its pixels at half grey or brighter are filled
    in (white = fill in); it must be the model's size."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            gray = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
            width, height = image.size
    except FileNotFoundError:
        raise ValueError(f"mask file {path} does not exist: pass mask=<PNG file> or one of "
                         f"{', '.join(MASKS)}.") from None
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"mask file {path} is not an image: pass a PNG, white where the image "
                         "is filled in.") from None
    if (height, width) != tuple(size):
        raise ValueError(f"mask file {path} is {width}x{height} but the model makes "
                         f"{size[1]}x{size[0]} images: pass a mask of that size.")
    return (gray.reshape(1, 1, height, width) >= 128).float()


def mask_option(option: str, n: int, size: Size, seed: int = 0) -> torch.Tensor:
    """The command line's ``mask=``: a generator name, else a PNG file."""
    if option in MASKS:
        return make_mask(option, n, size, seed)
    if not str(option).lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")) \
            and not Path(str(option)).exists():
        raise ValueError(f"mask must be one of {', '.join(MASKS)} or a PNG file; got "
                         f"{option!r}.")
    return load_mask(option, size)
