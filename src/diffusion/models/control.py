"""The control images a ControlNet (``models.controlnet``) is conditioned on, computed from each
image as training and evaluation need them, on the images' device:

- ``edges``: Canny's edge map (kornia's ``canny``: Gaussian smoothing with ``sigma``, Sobel
  gradients, non-maximum suppression, hysteresis between ``low`` and ``high`` on the gradient
  magnitude of the image in [0, 1]), 1 on an edge and 0 elsewhere; ``method=sobel`` is the plain
  Sobel magnitude thresholded at ``high``. One channel; colour images are taken to grey
  (ITU-R 601 luma) first.
- ``blur``: a low-pass copy, a Gaussian blur of standard deviation ``sigma`` pixels (kornia's
  ``gaussian_blur2d``, kernel 2 ceil(3 sigma) + 1, reflect padding); the image's channels.
- ``mask``: a region of the image: the pixels inside one rectangle kept, the rest set to 0
  (mid-grey in [-1, 1]), and the rectangle itself as a last channel. The rectangle covers
  ``fraction`` of each side, placed from the image's index in its split (``box``), so a test
  image has the same region in every evaluation.

Every control image is in [-1, 1] as the data are, (B, ``channels(C)``, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion.checks import check_choice, check_number
from diffusion.errors import ConfigError

KINDS = ("edges", "blur", "mask")
EDGE_METHODS = ("canny", "sobel")


def _kornia():
    try:
        import kornia
    except ImportError:
        raise ConfigError("control=edges|blur needs kornia: pip install kornia (or pip "
                          "install -e .).") from None
    return kornia


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] from images in [-1, 1] (ITU-R 601 luma for three channels)."""
    x = (images.float() + 1) / 2
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).reshape(1, 3, 1, 1)
        x = (x * weights).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    return x.clamp(0, 1)


@dataclass
class ControlImages:
    """The control image of ``kind`` for a batch of images; see the module docstring."""

    kind: str = "edges"
    method: str = "canny"
    sigma: float = 1.0
    low: float = 0.1
    high: float = 0.2
    fraction: float = 0.5
    scale: float = 1.0  # the control_scale sampling uses unless told otherwise

    def __post_init__(self):
        check_choice("control.kind", self.kind, KINDS)
        check_choice("control.method", self.method, EDGE_METHODS)
        check_number("control.sigma", self.sigma, above=0)
        check_number("control.low", self.low, 0, 1)
        check_number("control.high", self.high, 0, 1)
        if self.low > self.high:
            raise ConfigError(f"control.low={self.low} must not exceed control.high="
                              f"{self.high} (Canny's hysteresis thresholds).")
        check_number("control.fraction", self.fraction, above=0, maximum=1)
        check_number("control.scale", self.scale, minimum=0)

    def channels(self, image_channels: int) -> int:
        """The control image's channels for images of ``image_channels``."""
        return {"edges": 1, "blur": image_channels, "mask": image_channels + 1}[self.kind]

    def __call__(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The control images of ``images`` (B, C, H, W) in [-1, 1]; ``index`` (B,) places the
        mask's rectangle (default: 0..B-1)."""
        if self.kind == "edges":
            return self.edges(images)
        if self.kind == "blur":
            k = _kornia()
            size = 2 * math.ceil(3 * self.sigma) + 1
            return k.filters.gaussian_blur2d(images.float(), (size, size),
                                             (self.sigma, self.sigma), border_type="reflect")
        if index is None:
            index = torch.arange(images.shape[0], device=images.device)
        keep = self.box(index, images.shape[-2], images.shape[-1]).to(images.device)
        return torch.cat([images.float() * keep, keep * 2 - 1], dim=1)

    def preview(self, control: torch.Tensor, channels: int) -> torch.Tensor:
        """Control images shown as images of ``channels``: an edge map repeated, a blur or a
        masked image without the mask channel."""
        if self.kind == "edges":
            return control.expand(-1, channels, -1, -1)
        return control[:, :channels]

    def network_inputs(self, x0: torch.Tensor, generator: torch.Generator,
                       global_batch: int | None = None, part: slice | None = None) -> dict:
        """What a ControlNet takes beside x in training: ``control``, the control images of
        the clean ``x0``. The mask's rectangles are placed at random (one of its 16 places per
        image, drawn from ``generator`` for the ``global_batch`` and sliced to ``part``)."""
        index = None
        if self.kind == "mask":
            n = global_batch or x0.shape[0]
            index = torch.randint(16, (n,), device=x0.device, generator=generator)[
                part or slice(0, n)]
        return {"control": self(x0, index)}

    def edges(self, images: torch.Tensor) -> torch.Tensor:
        """1 on an edge, -1 elsewhere (the edge map in [-1, 1])."""
        k = _kornia()
        x = grey(images)
        if self.method == "canny":
            size = 2 * math.ceil(3 * self.sigma) + 1
            _, edges = k.filters.canny(x, low_threshold=self.low, high_threshold=self.high,
                                       kernel_size=(size, size), sigma=(self.sigma, self.sigma))
        else:
            edges = (k.filters.sobel(x) > self.high).float()
        return edges * 2 - 1

    def box(self, index: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 1, H, W): 1 inside each image's rectangle, 0 outside. The rectangle is
        ``fraction`` of each side; its corner steps through a 4 x 4 grid of positions with
        the image's index (index mod 16)."""
        bh, bw = max(1, round(self.fraction * height)), max(1, round(self.fraction * width))
        cell = index.long().cpu() % 16
        top = ((cell // 4) * (height - bh)) // 3
        left = ((cell % 4) * (width - bw)) // 3
        rows = torch.arange(height).reshape(1, height, 1)
        cols = torch.arange(width).reshape(1, 1, width)
        inside = ((rows >= top.reshape(-1, 1, 1)) & (rows < (top + bh).reshape(-1, 1, 1))
                  & (cols >= left.reshape(-1, 1, 1)) & (cols < (left + bw).reshape(-1, 1, 1)))
        return inside.unsqueeze(1).float()

    def sampling_inputs(self, control: torch.Tensor | None, scale: float | None, n: int,
                        image_shape: tuple[int, int, int]) -> ControlInputs:
        """A draw of ``n`` images of ``image_shape`` under ``control`` (its control images,
        checked) at ``scale`` (None: ``self.scale``)."""
        expected = (n, self.channels(image_shape[0]), *image_shape[1:])
        if control is None or not torch.is_tensor(control) or tuple(control.shape) != expected:
            got = "none" if control is None else tuple(getattr(control, "shape", ()))
            raise ConfigError(f"this run is a ControlNet ({self.kind}): pass control, the {n} "
                              f"control images of shape {expected} (diffusion.sample "
                              f"control_image=test|<file>|<folder>); got {got}.")
        scale = self.scale if scale is None else check_number("control_scale", scale, minimum=0)
        return ControlInputs(control.float(), float(scale))


@dataclass
class ControlInputs:
    """A ControlNet's inputs for one draw: the control images and the scale."""

    control: torch.Tensor
    scale: float

    def forward(self, forward, part: slice, device: torch.device):
        """``forward(x, t, y, control=, control_scale=)`` as ``forward(x, t, y)`` for images
        ``part`` of the draw (repeated where guidance doubles the batch)."""
        control = self.control[part].to(device)

        def controlled(x: torch.Tensor, t, y=None) -> torch.Tensor:
            repeats = x.shape[0] // control.shape[0]
            return forward(x, t, y, control=control.repeat(repeats, 1, 1, 1),
                           control_scale=self.scale)
        return controlled
