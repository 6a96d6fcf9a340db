"""Pictures of the diffusion process: sample grids, denoising chains (grid and
animated GIF), forward-process strips and curves. Images are in [-1, 1]."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """A square-ish grid of ``images`` (n, C, H, W)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(to_unit(images), path, nrow=nrow, padding=2)
    return path


def _to_pil(grid: torch.Tensor) -> Image.Image:
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def save_chain_grid(chain: torch.Tensor, path: str | Path) -> Path:
    """Rows are samples, columns are reverse-process frames: chain is (n, frames, C, H, W)."""
    n, frames = chain.shape[:2]
    return save_grid(chain.reshape(n * frames, *chain.shape[2:]), path, nrow=frames)


def save_chain_gif(chain: torch.Tensor, path: str | Path, duration_ms: int = 120,
                   hold_last_ms: int = 1500) -> Path:
    """An animated GIF of the reverse process; each frame shows all samples side by side."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [_to_pil(make_grid(to_unit(chain[:, f]), nrow=chain.shape[0], padding=2))
              for f in range(chain.shape[1])]
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path
