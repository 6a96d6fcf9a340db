"""Where results go: an unwritable or full place is one sentence before the work (or, when
the disk fills during it, one sentence naming the file, with nothing half-written left), and
a damaged cache file is named and computed again. Also the checks of the two commands that
only draw (visualize, report): every option is checked before anything is read."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, cli_env
from diffusion.commands.report import report
from diffusion.commands.visualize import visualize
from diffusion.errors import ConfigError, StorageError
from diffusion.runtime.files import load_cached, save_torch, write_atomic
from hydra_utils import compose_config


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB file system of its own (a tmpfs), so the disk really fills up; skipped where
    mounting is not allowed."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(full_disk):
    path = full_disk / "record.pt"
    write_atomic(path, b"old")
    with pytest.raises(StorageError, match=rf"^The disk is full: {path} could not be written "
                                           r"\(no partial file is left\): free space there"):
        save_torch(torch.zeros(1 << 17), path)  # 512 KiB on a 256 KiB disk
    assert path.read_bytes() == b"old" and _leftovers(full_disk) == []


def test_a_training_that_fills_the_disk_ends_in_one_sentence(full_disk, tiny_mnist_root):
    run = full_disk / "run"
    result = subprocess.run(
        [sys.executable, "-m", "diffusion.train", *TINY, f"paths.data_dir={tiny_mnist_root}",
         f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=240, env=cli_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: The disk is full: {run}/checkpoints/step_")
    assert _leftovers(full_disk) == []
    assert '"status": "failed"' in (run / "status.json").read_text()


@pytest.fixture
def caplog(caplog, monkeypatch):
    """``caplog``, with the cache's logger enabled again (an in-process Hydra command earlier
    in the session may have disabled the loggers that existed then)."""
    monkeypatch.setattr(logging.getLogger("diffusion.runtime.files"), "disabled", False)
    return caplog


def test_a_damaged_cache_file_is_named_and_computed_again(tmp_path, caplog):
    path = tmp_path / "features.pt"
    save_torch(torch.arange(1000.0), path)
    path.write_bytes(path.read_bytes()[:300])  # a write cut short
    with caplog.at_level(logging.WARNING):
        assert load_cached(path) is None
    assert f"The cache file {path} is damaged" in caplog.text
    assert not path.exists()
    assert load_cached(tmp_path / "missing.pt") is None


def test_a_damaged_decoded_image_cache_is_rebuilt(tmp_path, caplog):
    from diffusion.data.image_folder import ImageFolderDataset
    from diffusion.data.synthetic import write_shape_folder

    folder = write_shape_folder(tmp_path / "shapes", n=6)
    cache = tmp_path / "cache"
    first = ImageFolderDataset(root=folder, image_size=16, center_crop=True,
                               cache_dir=cache).preprocessed()
    (cached,) = list((cache / "image_folder").glob("*.pt"))
    cached.write_bytes(b"\x80garbage")
    with caplog.at_level(logging.WARNING):
        again = ImageFolderDataset(root=folder, image_size=16, center_crop=True,
                               cache_dir=cache).preprocessed()
    assert f"The cache file {cached} is damaged" in caplog.text
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def _cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=240, env={**cli_env(), **(env or {})})


@pytest.mark.parametrize(("command", "args", "env", "message"), [
    ("diffusion.bench", ["bench.out={tmp}/a-file/b.json"], {},
     "error: {tmp}/a-file is a file, so {tmp}/a-file/b.json cannot be written: set bench.out "
     "to a writable file."),
    ("diffusion.visualize", ["forward", "out={tmp}/a-file/f.png"], {},
     "error: {tmp}/a-file is a file, so {tmp}/a-file/f.png cannot be written: set out= to a "
     "writable file."),
    ("diffusion.report", ["{tmp}/sweep", "out={tmp}/a-file"], {},
     "error: {tmp}/a-file is a file, not a folder: set out= to a writable folder."),
    ("diffusion.visualize", ["forward", "data=image_folder", "data.root={tmp}/shapes",
                             "out={tmp}/f.png"], {"DIFFUSION_CACHE": "{tmp}/a-file"},
     "error: {tmp}/a-file is a file, not a folder: free space there, or set DIFFUSION_CACHE "
     "(or data.cache_dir) to a writable folder with space."),
], ids=["bench.out", "visualize-out", "report-out", "DIFFUSION_CACHE"])
def test_an_unwritable_destination_is_refused_before_the_work(tmp_path, command, args, env,
                                                                message, tiny_mnist_root):
    from diffusion.data.synthetic import write_shape_folder

    write_shape_folder(tmp_path / "shapes", n=3)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "config.yaml").write_text("data:\n  name: mnist\n")
    fill = {"tmp": tmp_path}
    result = _cli(command, *[a.format(**fill) for a in args], "paths.data_dir="
                  f"{tiny_mnist_root}" if command != "diffusion.report" else "title=t",
                  env={k: v.format(**fill) for k, v in env.items()})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == message.format(**fill)


def test_a_read_only_current_folder_is_named_by_train(tmp_path, tiny_mnist_root):
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(tmp_path)],
                                            capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here")
    if os.geteuid() != 0:
        tmp_path.chmod(0o555)
    try:
        result = subprocess.run([sys.executable, "-m", "diffusion.train", *TINY,
                                 f"paths.data_dir={tiny_mnist_root}"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=240, env=cli_env())
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path)], capture_output=True)
        tmp_path.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: Cannot create the run folder runs/")
    assert "set paths.runs_dir to a writable folder" in result.stderr


VISUALIZE_ERRORS = [
    (["figure=forward", "schedules=[]"], "schedules must be a list of beta schedules"),
    (["figure=forward", "schedules=[linear,foo]"],
     "schedules must be one of cosine, linear, scaled_linear, sigmoid; got 'foo'."),
    (["figure=forward", "images=0"], "images must be an integer from 1 to 64; got 0."),
    (["figure=forward", "columns=1"], "columns must be an integer from 2 to 64"),
    (["figure=forward", "num_train_timesteps=10", "columns=11"],
     "columns must be an integer from 2 to 10"),
    (["figure=forward", "seed=1.5"], "seed must be an integer; got 1.5."),
    (["figure=forward", "wandb=maybe"], "wandb must be true or false; got 'maybe'."),
    (["figure=losses", "run={run}", "images=3"],
     "images only applies to the forward figure, and python -m diffusion.visualize losses "
     "draws the run's records: drop it."),
    (["figure=fid", "run={run}", "data=fashion_mnist"], "data only applies to the forward"),
    (["figure=forward", "run={run}", "data.image_size=8"],
     "run= draws the forward process on the run's own data, so data settings do not apply"),
]


@pytest.mark.parametrize(("args", "message"), VISUALIZE_ERRORS,
                         ids=[" ".join(a)[:40] for a, _ in VISUALIZE_ERRORS])
def test_visualize_refuses_options_that_are_wrong_or_change_nothing(tmp_path, args, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  name: mnist\n")
    overrides = [a.format(run=run) for a in args]
    cfg = compose_config([*overrides, f"out={tmp_path / 'f.png'}"], config_name="visualize")
    with pytest.raises(ConfigError) as error:
        visualize(cfg, overrides)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["sweep=[]"], "sweep= names no folder"),
    (["sweep={tmp}", "title=3"], "title must be text; got 3"),
    (["sweep={tmp}/missing"], "sweep={tmp}/missing is not a folder"),
], ids=["empty", "title", "missing"])
def test_report_refuses_bad_options_before_writing(tmp_path, args, message):
    out = tmp_path / "report"
    cfg = compose_config([*[a.format(tmp=tmp_path) for a in args], f"out={out}"],
                         config_name="report")
    with pytest.raises((ConfigError, ValueError, RuntimeError)) as error:
        report(cfg)
    assert str(error.value).startswith(message.format(tmp=tmp_path))
    assert not out.exists()
