"""Figures: the forward process (library and command line), loss curves, FID against steps,
grids side by side."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.commands.visualize import visualize
from diffusion.reporting import figures as viz
from diffusion.reporting.figures import forward_figure
from diffusion.reporting.pictures import read_grid_box
from diffusion.schedulers import DDPMScheduler
from hydra_utils import compose_config


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _pixels(path) -> np.ndarray:
    """Grey levels (height, width) of a written image."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _levels(n: int, frames: int, side: int = 8) -> torch.Tensor:
    """(n, frames, 1, side, side) tiles of one value each: frame f of sample i is
    -1 + 2 * (f + i) / (n + frames - 2), so the first tile is black and the last white."""
    value = torch.arange(n)[:, None] + torch.arange(frames)[None, :]
    value = -1 + 2 * value.float() / (n + frames - 2)
    return value[..., None, None, None].expand(n, frames, 1, side, side).clone()


def _tile_centres(pixels: np.ndarray, rows: int, cols: int, side: int = 8, pad: int = 2):
    """The grey level at the centre of each tile of a torchvision grid (padding ``pad``)."""
    step = side + pad
    return np.array([[pixels[pad + r * step + side // 2, pad + c * step + side // 2]
                      for c in range(cols)] for r in range(rows)])


def test_grid_layout_and_value_mapping(tmp_path):
    """-1 is black, +1 white, 0 mid-grey; 5 images make a 3-wide grid of 2 rows with 2-pixel
    black padding."""
    values = torch.tensor([-1.0, 1.0, 0.0, -3.0, 3.0])  # out of range values are clamped
    images = values[:, None, None, None].expand(5, 1, 8, 8)
    path = viz.save_grid(images, tmp_path / "grid.png")
    assert _is_png(path) == (3 * 10 + 2, 2 * 10 + 2)
    pixels = _pixels(path)
    assert _tile_centres(pixels, 2, 3).tolist() == [[0, 255, 128], [0, 255, 0]]
    assert (pixels[:2] == 0).all() and (pixels[:, 10:12] == 0).all()  # padding
    assert (pixels[2:10, 2:10] == 0).all() and (pixels[2:10, 12:20] == 255).all()  # whole tiles


def test_forward_process_figure_has_a_block_per_schedule(tmp_path):
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    schedulers = {name: DDPMScheduler(num_train_timesteps=100, beta_schedule=name)
                  for name in ("linear", "cosine", "sigmoid")}
    two = _is_png(viz.forward_process_figure(images, dict(list(schedulers.items())[:2]),
                                             tmp_path / "two.png", columns=5))
    three = _is_png(viz.forward_process_figure(images, schedulers, tmp_path / "three.png",
                                               columns=5))
    assert three[1] > two[1]  # one more block of rows


def test_visualize_forward_on_dataset_images(tmp_path, tiny_mnist_root):
    cfg = compose_config(["figure=forward", f"paths.data_dir={tiny_mnist_root}",
                          f"out={tmp_path / 'forward.png'}", "images=2", "columns=4"],
                         config_name="visualize")
    assert visualize(cfg) == tmp_path / "forward.png"
    # the configured figure: 2 test images, 4 columns, the default linear and cosine blocks
    direct = forward_figure(cfg.data, tmp_path / "direct.png", ("linear", "cosine"), 1000,
                            images=2, columns=4)
    assert np.array_equal(_pixels(tmp_path / "forward.png"), _pixels(direct))
    wider = forward_figure(cfg.data, tmp_path / "wider.png", ("linear", "cosine"), 1000,
                           images=2, columns=8)
    assert _is_png(wider)[0] > _is_png(direct)[0]


def test_visualize_needs_a_run_for_run_figures(tmp_path):
    cfg = compose_config(["figure=losses"], config_name="visualize")
    with pytest.raises(ValueError, match="needs run=<run folder>"):
        visualize(cfg)
    cfg = compose_config(["figure=movie"], config_name="visualize")
    with pytest.raises(ValueError, match="figure must be one of forward, losses, fid"):
        visualize(cfg)


def test_command_line_takes_the_figure_as_first_word(tmp_path, tiny_mnist_root, monkeypatch,
                                                     capsys):
    from hydra.core.global_hydra import GlobalHydra

    from diffusion.commands.visualize import main

    out = tmp_path / "f.png"
    monkeypatch.setattr(sys, "argv", ["visualize", "forward", "data=mnist",
                                      f"paths.data_dir={tiny_mnist_root}", f"out={out}",
                                      "images=1", "columns=3"])
    GlobalHydra.instance().clear()
    main()
    assert f"forward: {out}" in capsys.readouterr().out
    cfg = compose_config(["data=mnist", f"paths.data_dir={tiny_mnist_root}"],
                         config_name="visualize")
    direct = forward_figure(cfg.data, tmp_path / "direct.png", images=1, columns=3)
    assert np.array_equal(_pixels(out), _pixels(direct))  # the words reached the figure


def test_curves_and_side_by_side(tmp_path):
    records = [{"step": s, "train/loss": 1 / s} for s in range(1, 50, 7)]
    records += [{"step": 49, "val/loss": 0.05}]
    _is_png(viz.plot_loss_curves({"a": records, "b": records[:3]}, tmp_path / "loss.png"))
    entries = [{"sampler": "ddim", "n": 100, "steps": s, "fid": 50 / s, "floor": 0.5}
               for s in (10, 20, 50)]
    _is_png(viz.plot_fid_vs_steps({"run": entries}, tmp_path / "fid.png"))
    grid = viz.save_grid(torch.rand(4, 1, 8, 8), tmp_path / "grid.png")
    two = _is_png(viz.side_by_side({"left": grid, "right": grid}, tmp_path / "two.png"))
    three = _is_png(viz.side_by_side({"a": grid, "b": grid, "c": grid}, tmp_path / "three.png"))
    assert three[0] / two[0] == pytest.approx(1.5, rel=0.1)  # one panel per image, in a row


def test_chain_grid_rows_are_samples_columns_are_frames(tmp_path):
    chain = _levels(2, 4)
    path = viz.save_chain_grid(chain, tmp_path / "plain.png")
    assert _is_png(path) == (4 * 10 + 2, 2 * 10 + 2)
    assert _tile_centres(_pixels(path), 2, 4).tolist() == [[0, 64, 128, 191], [64, 128, 191, 255]]


def test_chain_grid_labels_its_timesteps(tmp_path):
    def labelled(frames):
        return _is_png(viz.save_chain_grid(_levels(2, frames), tmp_path / f"l{frames}.png",
                                           timesteps=[*range(frames - 2, -1, -1), -1]))

    four, eight = labelled(4), labelled(8)
    assert eight[0] > 1.5 * four[0]  # a labelled column per frame


def test_chain_gif_has_a_frame_per_step(tmp_path):
    chain = _levels(3, 5)
    path = viz.save_chain_gif(chain, tmp_path / "chain.gif", duration_ms=100, hold_last_ms=900)
    box = read_grid_box(path)
    assert (box.rows, box.columns) == (2, 2)  # the samples in a near-square grid
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5
        durations, centres = [], []
        for f in range(gif.n_frames):
            gif.seek(f)
            durations.append(gif.info["duration"])
            pixels = np.asarray(gif.convert("L"))
            centres.append([int(pixels[y, x]) for x, y in
                            (box.centre(i // 2, i % 2) for i in range(3))])
    assert durations == [100, 100, 100, 100, 900]  # the last frame is held
    expected = (255 * (chain[:, :, 0, 0, 0].T + 1) / 2).round().int().tolist()
    assert centres == expected  # frame f shows step f of every sample
