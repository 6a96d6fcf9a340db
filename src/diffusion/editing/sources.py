"""Where the command line's edits start: ``input=`` as an image file, a folder of images, or a
split of the run's dataset, read into (N, C, H, W) tensors in [-1, 1] of the model's size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from diffusion.data import Preprocess, build_dataset, dataset_info, to_model_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """One image file as (C, H, W) in [-1, 1]: grey or RGB as the model takes, its shorter
    side resized to ``image_size`` and centre-cropped to a square."""
    try:
        with Image.open(path) as image:
            pixels = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"input {path} is not an image: pass a PNG or JPEG file, a folder of "
                         "them, or a split of the run's dataset.") from None
    return to_model_range(Preprocess(image_size, center_crop=True)(pixels))


def read_input(option: str, n: int, start: int, data: Mapping,
               data_root: str | None = None) -> torch.Tensor:
    """``n`` images from ``option`` (file, folder (its images by name), or data split; from
    index ``start`` of a folder or split), for a model trained on ``data``."""
    channels, size = int(data["channels"]), int(data["image_size"])
    splits = dataset_info(data["name"]).splits
    path = Path(str(option))
    if option in splits and not path.exists():
        dataset = build_dataset(data["name"], split=option, root=data_root or data.get("root"),
                                image_size=data.get("image_size"),
                                center_crop=bool(data.get("center_crop")), download=False)
        if start >= len(dataset):
            raise ValueError(f"start={start} is past the {len(dataset)} images of "
                             f"{data['name']}/{option}: pass a smaller start.")
        return torch.stack([dataset[i][0] for i in range(start, min(start + n, len(dataset)))])
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(files) <= start:
            raise ValueError(f"input folder {path} has {len(files)} images, none from "
                             f"start={start}: pass a folder of PNG or JPEG files.")
        return torch.stack([read_image(p, channels, size) for p in files[start:start + n]])
    if path.is_file():
        return read_image(path, channels, size).unsqueeze(0)
    what = f"an image file, a folder of images or a split of {data['name']} ({', '.join(splits)})"
    if path.suffix or len(path.parts) > 1:  # a path, not a split's name
        raise ValueError(f"input {path} does not exist: pass {what}.")
    raise ValueError(f"input must be {what}; got {option!r}.")
