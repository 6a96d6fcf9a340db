"""``data=image_folder``: a folder of the user's own images, its labels, split, decode cache
and errors, FID over the autoencoder features, and a run trained, sampled and evaluated on a
folder of generated shapes."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from diffusion.commands.evaluate import evaluate
from diffusion.commands.sample import sample
from diffusion.commands.train import train
from diffusion.data import build_dataset
from diffusion.data.datasets import Preprocess
from diffusion.data.decoded import _decode
from diffusion.data.image_files import count_classes, list_images
from diffusion.data.image_folder import split_indices
from diffusion.data.synthetic import SHAPES, write_shape_folder
from diffusion.errors import ConfigError
from diffusion.metrics import DataRef, FidScorer, load_feature_network
from diffusion.metrics.features import capped_epochs
from diffusion.runs.records import read_eval
from hydra_utils import compose_config
from test_train_errors import run_main

SIZE = 32


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every decode and feature network in a test's own cache."""
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """300 shapes in one subfolder per shape, in four formats and four sizes."""
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), n=300)


def folder(root, split="train", **options):
    return build_dataset("image_folder", root=root, split=split, image_size=SIZE,
                         center_crop=True, **options)


def test_class_subfolders_label_the_images_and_unreadable_files_are_skipped_once(
        tmp_path, caplog):
    root = write_shape_folder(tmp_path / "images", n=30)
    (root / "circle" / "broken.png").write_bytes(b"not an image")
    (root / "square" / ".hidden.png").write_bytes(b"skipped unseen")
    (root / "notes.txt").write_text("not an image file")
    with caplog.at_level(logging.WARNING):
        train, val = folder(root), folder(root, "val")
    assert train.num_classes == val.num_classes == 3 and train.channels == 3
    assert (len(train), len(val)) == (27, 3)  # the 30 readable images, 10% held out
    labels = torch.cat([train.preprocessed()[1], val.preprocessed()[1]])
    assert torch.bincount(labels).tolist() == [10, 10, 10]  # circle, square, triangle
    # a circle's centre pixel is its (bright) colour; its corners are the dark background
    circles = train.preprocessed()[0][train.preprocessed()[1] == SHAPES.index("circle")]
    assert (circles[:, :, SIZE // 2, SIZE // 2].float().mean(1) > 100).all()
    assert (circles[:, :, 0, 0] < 70).all()
    warnings = [r.getMessage() for r in caplog.records if "could not be decoded" in r.getMessage()]
    assert warnings == [f"Skipped 1 of 31 image files under {root} that could not be decoded "
                        "(circle/broken.png)."]
    x, y = train[0]
    assert x.shape == (3, SIZE, SIZE) and -1 <= x.min() < x.max() <= 1 and y in (0, 1, 2)


def test_a_flat_folder_is_unlabelled_and_greyscale_on_request(tmp_path):
    root = write_shape_folder(tmp_path / "flat", n=20, labelled=False)
    data = folder(root, color_channels=1)
    assert data.num_classes is None and data.channels == 1
    assert data.preprocessed()[0].shape == (18, 1, SIZE, SIZE)


def test_the_split_is_seeded_disjoint_and_complete():
    a, b = split_indices(100, 0.2, seed=0), split_indices(100, 0.2, seed=0)
    assert torch.equal(a["val"], b["val"]) and len(a["val"]) == 20
    assert sorted(torch.cat([a["train"], a["val"]]).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 0.2, seed=1)["val"], a["val"])
    assert len(split_indices(5, 0.01, seed=0)["val"]) == 1  # a fraction above 0 holds one out


def test_a_held_out_folder_is_labelled_by_the_training_folders_classes(tmp_path, shapes):
    held_out = write_shape_folder(tmp_path / "held_out", n=12, seed=1)
    val = folder(shapes, "val", val_root=held_out)
    assert len(val) == 12 and torch.bincount(val.preprocessed()[1]).tolist() == [4, 4, 4]
    assert len(folder(shapes, val_root=held_out)) == 300  # all of data.root trains
    (held_out / "star").mkdir()
    (held_out / "circle" / "circle_0000.png").rename(held_out / "star" / "star.png")
    with pytest.raises(ConfigError, match="class folder.*star that the training folder lacks"):
        folder(shapes, "val", val_root=held_out)


def test_decoded_images_are_cached_until_a_file_changes(tmp_path, cache):
    root = write_shape_folder(tmp_path / "images", n=12, labelled=False)
    first = folder(root, val_fraction=0).preprocessed()[0]
    cached = list((cache / "image_folder").glob("*.pt"))
    assert len(cached) == 1
    # garbage of the same size and time: the cache (keyed by path, size, time) is still used
    victim = root / "circle_0000.png"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert torch.equal(folder(root, val_fraction=0).preprocessed()[0], first)
    # a new modification time decodes again: the damaged file is skipped, the stale cache gone
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = folder(root, val_fraction=0).preprocessed()[0]
    assert len(again) == 11 and torch.equal(again, first[1:])
    assert [p for p in (cache / "image_folder").glob("*.pt")] != cached
    assert len(list((cache / "image_folder").glob("*.pt"))) == 1


def test_num_classes_comes_from_the_folder_for_conditioning(shapes, tmp_path):
    cfg = compose_config(["data=image_folder", f"data.root={shapes}", "conditioning=class"])
    assert cfg.data.num_classes == cfg.model.num_classes == 3
    flat = write_shape_folder(tmp_path / "flat", n=3, labelled=False)
    cfg = compose_config(["data=image_folder", f"data.root={flat}"])
    assert cfg.data.num_classes is None and cfg.model.num_classes is None


@pytest.mark.parametrize("case", ["no root", "missing", "empty", "wrong count", "fraction",
                                  "seed", "channels"])
def test_bad_folders_end_in_one_sentence(case, tmp_path, capsys, shapes):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    root, extra, expected = {
        "no root": (None, [], "error: data=image_folder needs the folder of images: pass "
                              "data.root=<folder>."),
        "missing": (tmp_path / "nope", [], f"error: data.root={tmp_path / 'nope'} is not a "
                                           "folder: point data.root at a folder of images"),
        "empty": (tmp_path / "empty", [], f"error: No images (png, jpg, jpeg, webp, bmp) under "
                                          f"{tmp_path / 'empty'}: point data.root at a folder"),
        "wrong count": (shapes, ["data.num_classes=5"], "error: data.num_classes is 5 but "
                                                        "diffusion.data.ImageFolderDataset has 3"),
        "fraction": (shapes, ["data.val_fraction=1.5"], "error: data.val_fraction must be a "
                                                        "number in [0, 1); got 1.5."),
        "seed": (shapes, ["data.split_seed=abc"], "error: data.split_seed must be an integer; "
                                                  "got 'abc'."),
        "channels": (shapes, ["data.channels=4"], "error: data.channels must be 1 (greyscale) or "
                                                  "3 (RGB) for an image folder; got 4."),
    }[case]
    argv = ["data=image_folder", "model=basic", "model.base_channels=8", "trainer=debug",
            "logger=none", "data.num_workers=0", "data.batch_size=8", f"data.image_size={SIZE}",
            f"paths.runs_dir={tmp_path / 'runs'}", *extra,
            *([f"data.root={root}"] if root else [])]
    code, message = run_main(argv, capsys)
    assert code == 1 and message.startswith(expected), message
    assert not list((tmp_path / "runs").rglob("config.yaml"))


def test_autoencoder_fid_tells_blurred_and_noisy_images_from_real_ones(tmp_path):
    """The autoencoder's features separate real images from damaged ones. Measured on 300
    shapes (240 train, 60 held out): floor 6.2, 7x7 blur 21, noise 278; greyscale copies of
    the colour images 6.1, which these features do not tell apart (see the README)."""
    root = write_shape_folder(tmp_path / "flat", n=300, labelled=False)
    options = dict(val_fraction=0.2, color_channels=3)
    features = load_feature_network("image_folder", root=root, image_size=SIZE,
                                    center_crop=True, options=options, progress=False)
    assert features.feature_id.startswith("image_folder-autoencoder@")
    assert "autoencoder" in features.description and features.feature_id in features.description
    ref = DataRef("image_folder", str(root), SIZE, True, options)
    scorer = FidScorer(features, ref, kid_subset_size=50)
    real = ref.images("train")
    floor, _ = scorer.floor(len(real))
    blurred = scorer.score(TF.gaussian_blur(real, [7, 7], [2.0, 2.0])).fid
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    assert 2 * floor < blurred < scorer.score(noise).fid / 4, (floor, blurred)


def test_a_run_trains_samples_and_evaluates_on_a_folder_of_shapes(tmp_path, shapes):
    overrides = ["data=image_folder", f"data.root={shapes}", f"data.image_size={SIZE}",
                 "conditioning=class", "model=basic", "model.base_channels=8", "trainer=debug",
                 "trainer.max_steps=6", "sampler.steps=2", "logger=none", "data.batch_size=8",
                 "data.num_workers=0", "data.on_device=true"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = train(compose_config(overrides), run_dir)
    assert summary["step"] == 6
    grids = sample(compose_config([f"run={run_dir}", "n=6", "sampler.steps=2", "device=cpu",
                                   "save_tensors=true"], config_name="sample"))
    images = torch.load(grids["tensors"], weights_only=True)
    assert images.shape == (6, 3, SIZE, SIZE)
    evaluate(compose_config([f"run={run_dir}", "n=32", "sampler.steps=2", "batch_size=16",
                             "metrics.feature_epochs=5", "metrics.kid_subset_size=8",
                             "device=cpu", "plot=false"], config_name="evaluate"))
    (entry,) = read_eval(run_dir).values()
    assert entry["reference"] == "image_folder/val" and entry["reference_n"] == 30
    assert entry["num_classes"] == 3 and entry["fid"] > entry["floor"]
    assert entry["feature_id"].startswith("image_folder-autoencoder@")
    assert f"comparable only between scores with feature_id {entry['feature_id']}" in \
        entry["features"]
    assert json.loads((run_dir / "eval.json").read_text())["entries"]


def test_class_conditioning_on_an_unlabelled_folder_is_refused(tmp_path, capsys):
    flat = write_shape_folder(tmp_path / "flat", n=12, labelled=False)
    code, message = run_main(["data=image_folder", f"data.root={flat}", "conditioning=class",
                              "logger=none", f"paths.runs_dir={tmp_path / 'runs'}"], capsys)
    assert code == 1 and message == (
        "error: conditioning=class needs labelled data but data image_folder has no classes (an "
        "image folder is labelled by one subfolder per class): label the images or drop "
        "conditioning=class.")
    assert not (tmp_path / "runs").exists()


def test_the_autoencoder_trains_fewer_epochs_on_large_folders():
    assert capped_epochs(40, 2000, n=300, batch_size=64) == 40  # 4 steps an epoch
    assert capped_epochs(40, 2000, n=10_000, batch_size=64) == 12  # 156 steps an epoch
    assert capped_epochs(40, 2000, n=1_000_000, batch_size=64) == 1


def test_linked_class_folders_are_followed_and_a_loop_is_skipped(tmp_path):
    """A class folder may be a link to images kept elsewhere: its images are listed and
    labelled as the class count says; a link back to the folder adds no class and no image."""
    source = write_shape_folder(tmp_path / "source", n=12)
    root = tmp_path / "linked"
    root.mkdir()
    for name in sorted(p.name for p in source.iterdir()):
        (root / name).symlink_to(source / name, target_is_directory=True)
    (root / "zloop").symlink_to(root, target_is_directory=True)
    listing = list_images(root)
    assert count_classes(str(root)) == listing.num_classes == len(SHAPES)
    assert len(listing.files) == 12
    assert sorted(set(listing.labels)) == list(range(len(SHAPES)))
    direct = list_images(source)
    assert (listing.files, listing.labels) == (direct.files, direct.labels)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, channels):
    """A 16-bit greyscale PNG is read as v / 257: PIL alone would clip every value above 255
    to white."""
    values = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 ... 65535
    Image.fromarray(values).save(tmp_path / "ramp.png")
    decoded = _decode(tmp_path / "ramp.png", "L" if channels == 1 else "RGB",
                      Preprocess(16, center_crop=True))
    expected = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    assert decoded.shape == (channels, 16, 16)
    assert all(torch.equal(plane, expected) for plane in decoded)


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_a_folder_with_a_comma_in_its_name_is_quoted_not_split(tmp_path, capsys, multirun):
    folder = write_shape_folder(tmp_path / "shapes,v2", n=6)
    argv = ["model=basic", "data=image_folder", f"data.root={folder}", "logger=none",
            f"paths.runs_dir={tmp_path / 'runs'}"]
    code, error = run_main(["-m", *argv] if multirun else argv, capsys)
    reading = "2 jobs of a sweep" if multirun else "a list of values"
    assert code == 1 and error == (
        f"error: data.root={folder}: the comma in this path makes Hydra read it as {reading}: "
        f"quote the value, e.g. 'data.root=\"{folder}\"' (the quotes inside the shell's).")
    assert not (tmp_path / "runs").exists()
    cfg = compose_config(["data=image_folder", f'data.root="{folder}"'])  # as it says
    assert cfg.data.root == str(folder) and cfg.data.num_classes == 3
