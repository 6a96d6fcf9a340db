"""Committed records name no folder of the machine they were made on, and the rule that keeps
the tools' records portable (``diffusion.runs.records``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffusion.runs.records import portable_arg, portable_path, shell_word

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".yaml", ".json", ".txt", ".csv"}
MACHINE_PATH = re.compile(r"/tmp/|/work/|/home/|/root/|/Users/|C:\\")


def absolute_paths(text: str) -> list[str]:
    """The words of ``text``, or values after ``=``, ``[``, ``,``, quotes or ``(``, that are
    absolute paths."""
    return re.findall(r"(?<![^\s=\[,'\"(])(?:/|[A-Za-z]:\\)[^\s,\]'\")]*", text)


def machine_paths(root: Path, files: list[Path]) -> list[str]:
    """``file:line: text`` for each line of ``files`` (under ``root``) that holds an absolute
    machine path."""
    found = []
    for file in files:
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{file.relative_to(root)}:{number}: {line.strip()[:120]}")
    return found


def test_machine_paths_are_found_with_file_and_line(tmp_path):
    record = tmp_path / "record.md"
    record.write_text("run=runs/multirun/x/0\nroot: /work/shared/data\nC:\\Users\\me\n")
    assert machine_paths(tmp_path, [record]) == ["record.md:2: root: /work/shared/data",
                                       "record.md:3: C:\\Users\\me"]


def test_absolute_paths_are_found_in_commands_and_json():
    text = ('run=runs/x/0 images/s "root": "/srv/data", sweep=[a,/b/c] out=<out>\n'
            "/tmp/x (C:\\data) $DIFFUSION_DATA/MNIST ![plot](loss.png)")
    assert absolute_paths(text) == ["/srv/data", "/b/c", "/tmp/x", "C:\\data"]


def test_committed_records_hold_no_machine_paths():
    files = [REPO / "README.md"] + sorted(
        p for p in (REPO / "experiments").rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    offending = machine_paths(REPO, files)
    assert not offending, "absolute paths of a machine in records:\n" + "\n".join(offending)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFUSION_DATA", raising=False)
    monkeypatch.delenv("DIFFUSION_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_paths_under_the_current_folder_become_relative(cwd):
    assert portable_path(cwd / "runs" / "multirun" / "x" / "0") == "runs/multirun/x/0"
    assert portable_path("runs/a/../b") == "runs/b"
    assert portable_path(cwd) == "."


def test_paths_under_the_environment_roots_name_the_variable(cwd, monkeypatch):
    data, runs = cwd.parent / "data", cwd.parent / "elsewhere"
    monkeypatch.setenv("DIFFUSION_DATA", str(data))
    monkeypatch.setenv("DIFFUSION_RUNS", str(runs) + "/")
    assert portable_path(data, "<data>") == "$DIFFUSION_DATA"
    assert portable_path(data / "MNIST" / "raw") == "$DIFFUSION_DATA/MNIST/raw"
    assert portable_path(runs / "multirun" / "x") == "$DIFFUSION_RUNS/multirun/x"
    assert portable_path(cwd.parent / "database", "<data>") == "<data>"  # not under data/


def test_other_paths_become_the_placeholder(cwd):
    assert portable_path("/somewhere/else/data", "<data>") == "<data>"
    assert portable_path("../data") == "<path>"
    assert portable_path("~/data", "<data>") == "<data>"


def test_arguments_with_paths_get_the_placeholder_of_their_key(cwd, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", "/srv/data")
    assert portable_arg("paths.data_dir=/srv/data") == "paths.data_dir=$DIFFUSION_DATA"
    assert portable_arg("data.root=/mnt/mnist") == "data.root=<data>"
    assert portable_arg("run=/mnt/runs/x/0") == "run=<runs>"
    assert portable_arg(f"bench.out={cwd / 'b.json'}") == "bench.out=b.json"
    assert portable_arg("bench.out=/mnt/b.json") == "bench.out=<out>"
    assert portable_arg("metrics.cache_dir=/mnt/f") == "metrics.cache_dir=<path>"
    for arg in ("model=unet", "data.batch_size=64", "-m", "python", "title=a/b"):
        assert portable_arg(arg) == arg


def test_shell_words_quote_all_but_the_variable():
    word = "paths.data_dir=$DIFFUSION_DATA/MNIST"
    assert shell_word(word) == word
    assert shell_word("title=a b") == "'title=a b'"
    assert shell_word("data.root=<data>") == "'data.root=<data>'"
    assert shell_word("name=$HOME") == "'name=$HOME'"
