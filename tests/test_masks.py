"""Inpainting masks: the named generators (seeded), PNG files, and their errors."""

import pytest
import torch
from PIL import Image

from diffusion.editing import MASKS, load_mask, make_mask, mask_option


def test_center_and_half_cover_a_quarter_and_a_half():
    center, half = make_mask("center", 2, (28, 28)), make_mask("half", 2, (28, 28))
    assert center.shape == half.shape == (2, 1, 28, 28)
    assert center.mean() == 0.25 and center[0, 0, 14, 14] == 1 and center[0, 0, 0, 0] == 0
    assert half.mean() == 0.5 and half[..., 14:].min() == 1 and half[..., :14].max() == 0


@pytest.mark.parametrize("kind", ["random_boxes", "strokes"])
def test_random_masks_are_seeded_binary_and_differ_between_images(kind):
    a, b = make_mask(kind, 16, (32, 32), seed=1), make_mask(kind, 16, (32, 32), seed=1)
    assert torch.equal(a, b) and not torch.equal(a, make_mask(kind, 16, (32, 32), seed=2))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    covered = a.mean(dim=(1, 2, 3))
    assert (covered > 0.01).all() and (covered < 0.9).all()
    assert len({tuple(m.flatten().tolist()) for m in a}) == 16  # each image its own mask


def test_strokes_are_connected_brush_lines():
    """A stroke is drawn with a round brush at least scale/24 wide: no isolated pixels."""
    mask = make_mask("strokes", 8, (48, 48), seed=0)[:, 0]
    padded = torch.nn.functional.pad(mask, (1, 1, 1, 1))
    neighbours = sum(padded[:, 1 + dy: 49 + dy, 1 + dx: 49 + dx]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)) - mask
    assert (neighbours[mask == 1] >= 2).all()


def test_png_masks_load_white_as_fill_and_must_match_the_size(tmp_path):
    pixels = torch.zeros(28, 28, dtype=torch.uint8)
    pixels[5:10, 3:20] = 255
    Image.fromarray(pixels.numpy()).save(tmp_path / "m.png")
    mask = mask_option(str(tmp_path / "m.png"), 3, (28, 28))
    assert mask.shape == (1, 1, 28, 28) and torch.equal(mask[0, 0], (pixels > 0).float())
    with pytest.raises(ValueError, match=r"^mask file .*m\.png is 28x28 but the model makes "
                                         r"32x32 images: pass a mask of that size\.$"):
        load_mask(tmp_path / "m.png", (32, 32))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"is not an image: pass a PNG"):
        mask_option(str(tmp_path / "bad.png"), 1, (28, 28))
    with pytest.raises(ValueError, match=r"^mask file .*missing\.png does not exist"):
        mask_option(str(tmp_path / "missing.png"), 1, (28, 28))
    with pytest.raises(ValueError, match=rf"^mask must be one of {', '.join(MASKS)} or a PNG "
                                         r"file; got 'circle'\.$"):
        mask_option("circle", 1, (28, 28))
