"""``python -m diffusion.edit``: each task's grid and record on a tiny trained run, the recorded
command repeating the edit, and bad input ending in one sentence before the model is loaded."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion.commands.edit import check_edit_config, edit
from diffusion.reporting.pictures import read_grid_box
from hydra_utils import compose_config
from test_train import run_training


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_mnist_root):
    tmp = tmp_path_factory.mktemp("edit")
    folder, _ = run_training(tmp, tiny_mnist_root, "model=basic", "model.base_channels=8",
                             "trainer.sample_every=0",
                             "trainer.val_every=0", name="plain")
    return folder


def _cfg(run, *overrides):
    return compose_config([f"run={run}", "sampler.steps=4", "n=4", *overrides],
                          config_name="edit")


def _grid_shape(path):
    box = read_grid_box(path)  # 28 px images with 2 px padding: 30 px a cell
    assert box.cell_width == box.cell_height == 30 * box.scale
    assert box.top > 0  # the header band names the columns
    return box.rows, box.columns


@pytest.mark.parametrize("task,extra,rows,cols", [
    ("img2img", ["samples=3", "sampler=heun", "sampler.steps=3"], 4, 4),
    ("inpaint", ["samples=2", "jump_length=2", "jump_n_sample=2", "mask=strokes"], 4, 4),
    ("invert", [], 4, 3),
    ("interpolate", ["frames=5"], 2, 7),
])
def test_each_task_writes_its_grid_and_record(run, task, extra, rows, cols):
    written = edit(_cfg(run, f"task={task}", "save_tensors=true", *extra))
    assert written["grid"].parent == run / "edits"
    assert _grid_shape(written["grid"]) == (rows, cols)
    record = json.loads(written["record"].read_text())
    assert record["task"] == task and "diffusion.edit" in record["command"]
    tensors = torch.load(written["tensors"], weights_only=True)
    assert tensors["inputs"].shape == (4, 1, 28, 28)
    if task == "inpaint":  # the known pixels come back exactly
        assert record["known_region_max_error"] < 1e-3
        assert tensors["results"].shape == (8, 1, 28, 28)
    if task == "invert":
        mse = (tensors["results"] - tensors["inputs"]).pow(2).flatten(1).mean(1)
        assert record["mse_per_image"] == pytest.approx(mse.tolist())


def _cli(*args, cwd=None):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffusion.edit", *args], capture_output=True,
                          text=True, timeout=240, env=env, cwd=cwd)


def test_the_recorded_command_repeats_the_edit(run):
    """Run from the run's parent folder, so the record names the run by a relative path."""
    result = _cli("run=plain", "task=img2img", "n=2", "sampler.steps=3", "samples=2",
                  "strength=0.5", "save_tensors=true", cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    first = run / "edits" / "img2img-test0-2-s0.5-x2-ddim-3_seed0"
    record = json.loads(Path(f"{first}.json").read_text())
    assert "run=plain checkpoint=plain/checkpoints/step_00000004.pt" in record["command"]
    words = shlex.split(record["command"])[3:]
    again = _cli(*words, "out=again.png", "save_tensors=true", cwd=run.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    a = torch.load(f"{first}.pt", weights_only=True)["results"]
    b = torch.load(run.parent / "again.pt", weights_only=True)["results"]
    assert torch.equal(a, b)


def test_a_bad_option_ends_in_one_sentence_and_writes_nothing(run, tmp_path):
    result = _cli(f"run={run}", "task=inpaint", "mask=circle", f"out={tmp_path / 'x.png'}")
    assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == ("error: mask must be one of center, half, "
                                                      "random_boxes, strokes or a PNG file; got "
                                                      "'circle'.")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["task=paint"], r"^task must be one of img2img, inpaint, invert, interpolate; got "
                     r"'paint'\.$"),
    (["task=img2img", "strength=1.5"], r"^strength must be a number in \[0, 1\]"),
    (["task=img2img", "sampler=ddpm", "sampler.steps=2000"], r"^sampler.steps must be an "
                                                             r"integer from 1 to 1000"),
    (["task=inpaint", "sampler=euler"], r"^inpaint runs RePaint, whose steps are DDIM "
                                        r"\(sampler=ddim, with sampler.eta\) or DDPM "
                                        r"\(sampler=ddpm\); got sampler=euler\.$"),
    (["task=invert", "sampler.eta=0.5"], r"^invert runs deterministic DDIM: use sampler=ddim "
                                         r"with sampler.eta=0; got sampler=ddim with eta=0.5\.$"),
    (["task=inpaint", "jump_n_sample=0"], r"^jump_n_sample must be an integer >= 1; got 0\.$"),
    (["task=interpolate", "n=1"], r"^interpolate takes its input images in pairs"),
    (["task=interpolate", "n=3"], r"^interpolate takes its input images in pairs \(the first "
                                  r"with the second, and so on\); test gave 3: "),
    (["task=inpaint", "strength=0.3"], r"^strength applies to task=img2img, and task=inpaint "
                                       r"does not read it: drop strength=0.3\.$"),
    (["task=img2img", "frames=4"], r"^frames applies to task=interpolate, and task=img2img "
                                   r"does not read it: drop frames=4\.$"),
    (["input=missing.png"], r"^input missing.png does not exist: pass an image file, a folder "
                            r"of images or a split of mnist \(train, test\)\.$"),
    (["input=nowhere"], r"^input must be an image file, a folder of images or a split of "
                        r"mnist \(train, test\); got 'nowhere'\.$"),
    (["start=100"], r"^start=100 is past the 32 images of mnist/test"),
    (["sampler.steps=0"], r"^sampler.steps must be an integer from 1 to 1000"),
])
def test_bad_values_are_found_before_the_model_is_loaded(run, args, message):
    with pytest.raises(ValueError, match=message):
        check_edit_config(_cfg(run, *args))


def test_png_inputs_and_masks_of_the_wrong_size(run, tmp_path):
    Image.new("L", (28, 28), 255).save(tmp_path / "digit.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    cfg = _cfg(run, f"input={tmp_path / 'digit.png'}", "task=inpaint",
               f"mask={tmp_path / 'mask.png'}")
    with pytest.raises(ValueError, match=r"is 32x32 but the model makes 28x28 images"):
        check_edit_config(cfg)
    Image.new("L", (28, 28), 0).save(tmp_path / "mask.png")
    _, images, mask, _, _ = check_edit_config(cfg)
    assert images.shape == (1, 1, 28, 28) and torch.all(images == 1) and mask.sum() == 0


def test_a_conditional_run_edits_with_its_labels(run, tmp_path, tiny_mnist_root):
    conditional, _ = run_training(tmp_path, tiny_mnist_root, "model=basic",
                                  "model.base_channels=8", "trainer.sample_every=0",
                                  "trainer.val_every=0", "model.num_classes=10",
                                  name="conditional")
    written = edit(_cfg(conditional, "task=invert", "n=2", "labels=[3,4]"))
    assert "labels=[3, 4]" in json.loads(written["record"].read_text())["command"]
    with pytest.raises(ValueError, match=r"^labels must be class labels in \[0, 9\]; got 10\."):
        check_edit_config(_cfg(conditional, "labels=10"))
    with pytest.raises(ValueError, match=r"^labels was given but the model is unconditional"):
        check_edit_config(_cfg(run, "labels=3"))
