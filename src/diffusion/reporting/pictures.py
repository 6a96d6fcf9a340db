"""Image grids that say what they show: a header band (a title line and column headers), row
labels at the left, small images scaled up (nearest neighbour) to a readable size, and the
denoising chain as an animated GIF with its timestep on every frame. Text is drawn with PIL's
default font, so no font file is needed. Images are in [-1, 1].

Each picture records where its grid lies in it (``grid_box``: the left, top, scale, rows,
columns and cell size in pixels) as PNG text (``Image.open(p).text["grid"]``) or as the GIF's
comment, so code that reads the images back can find each cell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torchvision.utils import make_grid

PADDING = 2
"""Pixels between the cells of a grid (and around it), before scaling."""
MIN_SIDE = 256
"""Small grids are scaled up by a whole factor until their shorter side reaches this..."""
MAX_SIDE = 1024
"""...unless that would take their longer side past this."""
FONT_SIZE = 14


@dataclass(frozen=True)
class GridBox:
    """Where the grid lies in a picture: its top-left corner, the whole factor it was scaled
    by, its rows and columns, and one cell's side in the picture (image and padding)."""

    left: int
    top: int
    scale: int
    rows: int
    columns: int
    cell_width: int
    cell_height: int

    def to_text(self) -> str:
        return json.dumps(asdict(self))

    def centre(self, row: int, column: int) -> tuple[int, int]:
        """The (x, y) pixel at the centre of a cell's image."""
        pad = PADDING * self.scale
        return (self.left + pad + column * self.cell_width + (self.cell_width - pad) // 2,
                self.top + pad + row * self.cell_height + (self.cell_height - pad) // 2)


def read_grid_box(path: str | Path) -> GridBox:
    """The ``GridBox`` a picture of this module recorded (PNG text, or a GIF's comment)."""
    with Image.open(path) as image:
        text = image.text.get("grid") if hasattr(image, "text") else None
        text = text or image.info.get("comment", b"").decode()
    return GridBox(**json.loads(text))


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


def _pil(grid: torch.Tensor) -> Image.Image:
    """A (C, H, W) tensor in [0, 1] as an L (one channel) or RGB image."""
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def scale_factor(width: int, height: int, min_side: int = MIN_SIDE,
                 max_side: int = MAX_SIDE) -> int:
    """The whole factor that brings the shorter side to ``min_side`` or more without the
    longer passing ``max_side`` (1 for grids large enough already)."""
    up = math.ceil(min_side / max(1, min(width, height)))
    cap = max_side // max(1, width, height)
    return max(1, min(up, cap))


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fitted(text: str, width: int, size: int = FONT_SIZE, smallest: int = 8):
    """(text, font) with the font shrunk, then the text cut, until it fits ``width`` px."""
    while size > smallest and font(size).getlength(text) > width:
        size -= 1
    face = font(size)
    while len(text) > 1 and face.getlength(text) > width:
        text = text[:-2] + "…"
    return text, face


def _text_height(size: int = FONT_SIZE) -> int:
    return size + 6


def class_blocks(num_classes: int, n: int, height: int = 1, width: int = 1,
                 max_classes: int = 16) -> tuple[torch.Tensor, int]:
    """A near-square grid of at most ``n`` images of ``height`` x ``width`` px with one block
    of whole rows per class (the first ``max_classes`` classes): (the labels in grid order,
    images per row). Of the block shapes that keep at least 3/4 of a class's share of ``n``,
    the one nearest a square grid, then the one with the most images."""
    classes = min(num_classes, max_classes, n)
    share = n // classes
    shapes = [(rows, share // rows) for rows in range(1, share + 1)
              if rows * (share // rows) * 4 >= 3 * share]
    rows, columns = min(shapes, key=lambda s: (
        round(abs(math.log(classes * s[0] * height / (s[1] * width))), 6), -s[0] * s[1]))
    return torch.arange(classes).repeat_interleave(rows * columns), columns


def labelled_grid(images: torch.Tensor, columns: int, title: str | None = None,
                  column_labels: Sequence[str] | None = None,
                  row_labels: Sequence[str] | None = None) -> tuple[Image.Image, GridBox]:
    """``images`` (n, C, H, W) in [-1, 1] as a grid of ``columns`` per row, scaled up when
    small, under a header band (``title``; ``column_labels``, one per column) and beside
    ``row_labels`` (one per block of rows: a class's rows share its label)."""
    grid = _pil(make_grid(_to_unit(images), nrow=columns, padding=PADDING))
    rows = math.ceil(images.shape[0] / columns)
    scale = scale_factor(*grid.size)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    cell_w, cell_h = (images.shape[-1] + PADDING) * scale, (images.shape[-2] + PADDING) * scale
    left = (max(font().getlength(str(t)) for t in row_labels) + 12) if row_labels else 0
    left = int(min(left, 200))
    top = (_text_height() + 4) * (title is not None) + _text_height() * bool(column_labels)
    white, black = (255, 0) if grid.mode == "L" else ((255,) * 3, (0,) * 3)
    canvas = Image.new(grid.mode, (left + grid.width, top + grid.height), white)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        text, face = _fitted(title, canvas.width - 8)
        draw.text((canvas.width / 2, 4), text, fill=black, font=face, anchor="ma")
    for i, label in enumerate(column_labels or []):
        text, face = _fitted(str(label), cell_w - 4)
        x = left + PADDING * scale / 2 + (i + 0.5) * cell_w
        draw.text((x, top - 3), text, fill=black, font=face, anchor="md")
    for i, label in enumerate(row_labels or []):
        block = rows / len(row_labels)
        text, face = _fitted(str(label), left - 8)
        y = top + PADDING * scale / 2 + (i + 0.5) * block * cell_h
        draw.text((left - 6, y), text, fill=black, font=face, anchor="rm")
        if i and block == int(block):  # a white rule between two classes' blocks
            y = top + round(i * block) * cell_h
            draw.rectangle((left, y, canvas.width - 1, y + PADDING * scale - 1), fill=white)
    return canvas, GridBox(left, top, scale, rows, columns, cell_w, cell_h)


def save_labelled_grid(images: torch.Tensor, path: str | Path, columns: int,
                       title: str | None = None, column_labels: Sequence[str] | None = None,
                       row_labels: Sequence[str] | None = None) -> Path:
    """``labelled_grid`` written to ``path`` (a PNG), its ``GridBox`` recorded in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image, box = labelled_grid(images, columns, title, column_labels, row_labels)
    info = PngInfo()
    info.add_text("grid", box.to_text())
    image.save(path, pnginfo=info)
    return path


def frame_label(timestep: int) -> str:
    """What a chain frame shows: ``t = 999`` for x_t, ``x_0 (t = 0 done)`` for the result."""
    return f"t = {timestep}" if timestep >= 0 else "x_0 (done)"


def save_chain_gif(chain: torch.Tensor, path: str | Path, timesteps: Sequence[int] | None = None,
                   duration_ms: int = 120, hold_last_ms: int = 1500) -> Path:
    """An animated GIF of the reverse process, chain (n, frames, C, H, W): each frame shows
    every sample in a near-square grid, scaled up when small, under a band that reads
    ``t = N`` (``timesteps``, one per frame, -1 for the final x_0; else the frame number)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, count = chain.shape[:2]
    columns = max(1, math.ceil(math.sqrt(n)))
    labels = ([frame_label(int(t)) for t in timesteps] if timesteps is not None
              else [f"frame {f + 1} of {count}" for f in range(count)])
    pictures = [labelled_grid(chain[:, f], columns, title=labels[f]) for f in range(count)]
    frames = [image for image, _ in pictures]
    durations = [duration_ms] * (count - 1) + [hold_last_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   comment=pictures[0][1].to_text())
    return path
