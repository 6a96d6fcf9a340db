"""Pictures that explain themselves: the trainer's grid (a header, class names, near-square),
the chain GIF (readable, a t counter), the edit grid's column headers, a guidance sweep drawn
against the guidance scale, legends labelled by overrides, and Heun drawn at its NFE."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusion.commands.edit import edit
from diffusion.commands.train import train
from diffusion.data.synthetic import write_shape_folder
from diffusion.reporting import figures as viz
from diffusion.reporting.pictures import (
    MIN_SIDE,
    class_blocks,
    read_grid_box,
    save_chain_gif,
)
from diffusion.reporting.sweeps import find_jobs, legend_labels, run_label, write_report
from diffusion.schedulers import NoiseScheduler
from hydra_utils import compose_config

SIZE = 16


def _grey(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")).astype(int)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """Two steps of a class-conditional run on a folder of two classes (circles, squares)
    of 16 px images, its grid of 32 images written at step 2; decodes cached in the test's
    own folder."""
    tmp = tmp_path_factory.mktemp("pictures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFUSION_CACHE", str(tmp / "cache"))
        yield _train_on_shapes(tmp)


def _train_on_shapes(tmp):
    shapes = write_shape_folder(tmp / "shapes", n=40)
    shutil.rmtree(shapes / "triangle")
    run = tmp / "run"
    run.mkdir()
    train(compose_config([
        "data=image_folder", f"data.root={shapes}", f"data.image_size={SIZE}",
        "data.center_crop=true", "conditioning=class", "model=basic", "model.base_channels=8",
        "trainer=debug", "trainer.max_steps=2", "trainer.sample_every=2", "trainer.val_every=0",
        "trainer.ckpt_every=2", "trainer.sample_n=32", "trainer.sample_guidance_scale=2",
        "sampler.steps=2", "logger=none", "data.batch_size=8", "data.num_workers=0",
        f"paths.data_dir={tmp}"]), run)
    return run


def test_the_training_grid_has_a_header_class_names_and_a_near_square_layout(folder_run):
    path = folder_run / "samples" / "step_00000002.png"
    box, pixels = read_grid_box(path), _grey(path)
    raw_height = box.rows * box.cell_height + 2 * box.scale  # the grid alone
    assert pixels.shape[0] == box.top + raw_height > raw_height
    assert (pixels[:box.top] < 128).sum() > 20  # text in the header band
    assert (pixels[box.top:, :box.left] < 128).sum() > 20  # class names at the left
    assert box.rows % 2 == 0  # one block of whole rows per class
    assert 0.5 <= box.rows / box.columns <= 2  # not a 2 x 16 strip
    assert box.rows * box.columns <= 32


@pytest.mark.parametrize(("classes", "n", "rows", "columns"),
                         [(2, 64, 8, 8), (2, 32, 6, 5), (10, 64, 10, 6), (10, 25, 10, 2),
                          (1, 36, 6, 6)])
def test_class_blocks_are_near_square_with_whole_rows_per_class(classes, n, rows, columns):
    labels, per_row = class_blocks(classes, n)
    assert (len(labels) // per_row, per_row) == (rows, columns)
    blocks = labels.reshape(rows, columns)
    assert (blocks == blocks[:, :1]).all()  # a row holds one class
    assert blocks[:, 0].tolist() == sorted(blocks[:, 0].tolist())


def test_the_chain_gif_is_readable_and_counts_t(tmp_path):
    still = torch.linspace(-1, 1, 8 * 28 * 28).reshape(8, 1, 1, 28, 28).expand(8, 4, 1, 28, 28)
    path = save_chain_gif(still.clone(), tmp_path / "chain.gif", timesteps=[999, 500, 0, -1])
    box = read_grid_box(path)
    assert box.rows * box.cell_height >= MIN_SIDE and box.columns * box.cell_width >= MIN_SIDE
    frames = []
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        for f in range(gif.n_frames):
            gif.seek(f)
            frames.append(np.asarray(gif.convert("L")).astype(int))
    band = [frame[:box.top] for frame in frames]
    assert all((b < 128).sum() > 10 for b in band)  # a counter on every frame
    for a, b in zip(band, band[1:], strict=False):
        assert (a != b).any()  # it changes from frame to frame...
    grid = [frame[box.top:] for frame in frames]
    assert all((g == grid[0]).all() for g in grid)  # ...while the still images do not


def test_the_edit_grid_names_its_columns(folder_run):
    written = edit(compose_config([f"run={folder_run}", "task=img2img", "input=val", "n=2",
                                   "samples=2", "sampler.steps=2", "device=cpu"],
                                  config_name="edit"))
    box, pixels = read_grid_box(written["grid"]), _grey(written["grid"])
    assert (box.rows, box.columns) == (2, 3) and box.top > 0
    header = pixels[:box.top]
    for column in range(3):  # input, result 1, result 2: a label above each column
        x = box.left + column * box.cell_width
        assert (header[-box.top // 2:, x:x + box.cell_width] < 128).sum() > 5


def _entry(sampler: str, steps: int, fid: float, scale: float | None = None) -> dict:
    return {"sampler": sampler, "timestep_spacing": "trailing", "steps": steps, "n": 16,
            "fid": fid, "floor": 0.1, "feature_id": "f", "reference": "mnist/test",
            "reference_n": 32, "guidance_scale": scale,
            "class_accuracy": None if scale is None else 0.1 * (1 + scale)}


def _run_folder(folder, overrides: list[str], entries: list[dict]):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "eval.json").write_text(json.dumps(
        {"entries": {f"e{i}": e for i, e in enumerate(entries)}}))
    return folder


def test_a_guidance_sweep_is_drawn_against_the_guidance_scale(tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["optimizer.lr=0.001,0.002"]}}}))
    for job, lr in (("0", "0.001"), ("1", "0.002")):
        _run_folder(sweep / job, ["trainer=debug", f"optimizer.lr={lr}"],
                    [_entry("ddim", 10, 5 - s, s) for s in (0, 1, 3)])
    out = tmp_path / "report"
    readme = write_report([sweep], out).read_text()
    assert (out / "fid_vs_guidance.png").stat().st_size > 0
    assert "](fid_vs_guidance.png)" in readme
    assert not (out / "fid_vs_steps.png").exists()  # not three dots at one step count
    _, swept = viz.guidance_sweeps([_entry("ddim", 10, 1.0), _entry("ddim", 10, 2.0, 1),
                                    _entry("ddim", 10, 3.0, 3), _entry("ddim", 20, 3.0, 3)])
    assert [e["guidance_scale"] for e in swept] == [1, 3]  # at 10 steps; 20 has one scale
    curves = viz.eval_curves({"run": swept}, "guidance_scale")
    assert curves == {"run": {"run ddim-10 (n=16)": [(1, 2.0), (3, 3.0)]}}


def test_legend_labels_are_the_overrides_that_differ():
    labels = legend_labels({
        "0": ["trainer=debug", "optimizer.lr=0.001", "scheduler.beta_schedule=linear"],
        "1": ["trainer=debug", "optimizer.lr=0.002", "scheduler.beta_schedule=linear"],
        "2": ["trainer=debug", "optimizer.lr=0.002", "scheduler.beta_schedule=cosine"]})
    assert labels == {"0": "lr=0.001, beta_schedule=linear",
                      "1": "lr=0.002, beta_schedule=linear",
                      "2": "lr=0.002, beta_schedule=cosine"}
    # shortened keys that would read alike are written in full
    assert legend_labels({"a": ["model.lr=1"], "b": ["optimizer.lr=1"]}) == {
        "a": "model.lr=1", "b": "optimizer.lr=1"}
    assert legend_labels({"alone": ["trainer=debug"]}) == {"alone": ""}


def test_a_runs_legend_label_is_not_its_date_and_time(tmp_path):
    sweep = tmp_path / "multirun" / "2025-01-02_03-04-05"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    for job, schedule in (("0", "linear"), ("1", "cosine")):
        _run_folder(sweep / job, ["model=basic", f"scheduler.beta_schedule={schedule}"], [])
    assert run_label(sweep / "1") == "beta_schedule=cosine"
    single = tmp_path / "basic-mnist" / "2025-01-02_03-04-05"
    _run_folder(single, ["model=basic"], [])
    (single / "config.yaml").write_text(yaml.safe_dump({"name": "basic-mnist"}))
    assert run_label(single) == "basic-mnist"
    assert [j.label for j in find_jobs([single])] == ["basic-mnist"]
    twin = tmp_path / "basic-mnist" / "2025-01-02_03-04-06"
    shutil.copytree(single, twin)
    assert [j.label for j in find_jobs([single, twin])] == [
        "basic-mnist (basic-mnist/2025-01-02_03-04-05)",
        "basic-mnist (basic-mnist/2025-01-02_03-04-06)"]  # alike: the folders tell them apart


def test_heun_is_drawn_at_its_network_evaluations(tmp_path):
    heun = NoiseScheduler.SAMPLERS["heun"](num_train_timesteps=1000)
    for steps in (1, 2, 5, 10):
        heun.set_timesteps(steps)
        assert viz.network_evaluations("heun", steps) == len(heun.timesteps)  # its model calls
        assert viz.network_evaluations("ddim", steps) == steps
    entries = [_entry("heun", 5, 2.0), _entry("heun", 10, 1.0), _entry("ddim", 10, 3.0),
               _entry("ddim", 20, 2.5)]
    curves = viz.eval_curves({"run": entries}, "nfe")["run"]
    assert curves == {"run ddim (n=16)": [(10, 3.0), (20, 2.5)],
                      "run heun (n=16)": [(9, 2.0), (19, 1.0)]}
    assert viz.plot_fid_vs_steps({"run": entries}, tmp_path / "fid.png").stat().st_size > 0
    assert math.isclose(viz.network_evaluations("euler", 7), 7)


def test_continuous_time_samplers_are_drawn_at_their_network_evaluations():
    """pc: predictor and corrector calls, 2 a step (3 with n_corrector=2); ode: Heun's
    2 steps - 1; ald: steps_per_level a level and the denoising call."""
    assert viz.network_evaluations("pc", 10) == 20
    assert viz.network_evaluations("pc", 10, {"n_corrector": 2}) == 30
    assert viz.network_evaluations("ode", 10) == 19
    assert viz.network_evaluations("em", 10) == 10
    assert viz.network_evaluations("ald", 4) == 21
    assert viz.network_evaluations("ald", 4, {"steps_per_level": 2, "denoise": False}) == 8
