"""Figures: the forward process (library and command line), loss curves, FID against steps,
grids side by side."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from diffusion import viz
from diffusion.schedulers import DDPMScheduler
from diffusion.visualize import visualize
from hydra_utils import compose_config


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


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
    _is_png(tmp_path / "forward.png")


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

    from diffusion.visualize import main

    out = tmp_path / "f.png"
    monkeypatch.setattr(sys, "argv", ["visualize", "forward", "data=mnist",
                                      f"paths.data_dir={tiny_mnist_root}", f"out={out}",
                                      "images=1", "columns=3"])
    GlobalHydra.instance().clear()
    main()
    assert f"forward: {out}" in capsys.readouterr().out
    _is_png(out)


def test_curves_and_side_by_side(tmp_path):
    records = [{"step": s, "train/loss": 1 / s} for s in range(1, 50, 7)]
    records += [{"step": 49, "val/loss": 0.05}]
    _is_png(viz.plot_loss_curves({"a": records, "b": records[:3]}, tmp_path / "loss.png"))
    entries = [{"sampler": "ddim", "n": 100, "steps": s, "fid": 50 / s, "floor": 0.5}
               for s in (10, 20, 50)]
    _is_png(viz.plot_fid_vs_steps({"run": entries}, tmp_path / "fid.png"))
    grid = viz.save_grid(torch.rand(4, 1, 8, 8), tmp_path / "grid.png")
    _is_png(viz.side_by_side({"left": grid, "right": grid}, tmp_path / "both.png"))


def test_chain_grid_labels_its_timesteps(tmp_path):
    chain = torch.rand(2, 4, 1, 8, 8) * 2 - 1
    plain = _is_png(viz.save_chain_grid(chain, tmp_path / "plain.png"))
    labelled = _is_png(viz.save_chain_grid(chain, tmp_path / "labelled.png",
                                           timesteps=[999, 500, 0, -1]))
    assert plain == (4 * 10 + 2, 2 * 10 + 2) and labelled[0] > plain[0]
