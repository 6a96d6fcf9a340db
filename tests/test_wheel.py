"""The package works installed from a wheel, away from any checkout: it brings its configs.

The wheel goes into a fresh virtual environment with ``--no-deps``; the dependencies (torch
and the rest) are borrowed from the running environment through a ``.pth`` line, so nothing
is downloaded. That line adds the folder to ``sys.path`` without reading its own ``.pth``
files, so an editable install of this repository there stays inactive, which the test checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from diffusion.config.paths import CONF_DIR
from test_cli import write_user_conf

REPO = Path(__file__).resolve().parents[1]


def _run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PROJECT_ROOT", "DIFFUSION_DATA",
                        "DIFFUSION_RUNS", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the sources, so no earlier build/ leaks into it."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-w", tmp_path / "dist", source], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("diffusion-*.whl")
    return wheel


def test_installed_wheel_trains_with_its_own_and_a_users_configs(tmp_path, tiny_mnist_root):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    wheel = _build_wheel(tmp_path)
    shipped = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml"))
    assert shipped == sorted(f"diffusion/conf/{p.relative_to(CONF_DIR).as_posix()}"
                             for p in CONF_DIR.rglob("*.yaml"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel],
         cwd=tmp_path)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"  # outside the repository, with no conf/ of its own
    work.mkdir()
    where = _run([python, "-c", "import diffusion, diffusion.config.paths as p; "
                  "print(diffusion.__file__, p.CONF_DIR)"], cwd=work).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in where), where  # not the checkout

    shown = _run([python, "-m", "diffusion.train", "--cfg", "job"], cwd=work).stdout
    assert "_target_: diffusion.models.AttentionUNet" in shown and "max_steps:" in shown

    conf = write_user_conf(tmp_path / "my_conf")
    shown = _run([python, "-m", "diffusion.train", "--config-dir", conf, "experiment=my_exp",
                  "--cfg", "job"], cwd=work).stdout
    assert "name: my_exp" in shown and "base_channels: 8" in shown

    _run([python, "-m", "diffusion.train", "--config-dir", conf, "experiment=my_exp",
          "trainer=debug", "sampler.steps=2", "logger=none", "data.batch_size=8",
          "data.num_workers=0",
          "trainer.max_steps=2", f"paths.data_dir={tiny_mnist_root}"], cwd=work)
    (run,) = (work / "runs" / "my_exp").iterdir()
    assert (run / "checkpoints" / "step_00000002.pt").is_file()
    assert "BasicUNet" in (run / "config.yaml").read_text()
