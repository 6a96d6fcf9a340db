"""Every ```bash block of experiments/*/README.md runs as pasted, in order, tiny (slow).

    python -m pytest -m slow tests/test_experiment_commands.py            # every block
    python -m pytest -m slow tests/test_experiment_commands.py -k samplers

Each block runs with ``bash -e`` (a failing line fails the block) in a scratch folder per
README that stands in for the repository root: a copy of ``experiments/`` and links to
``src/``, ``conf/``, ``tests/`` and ``pyproject.toml``. So the scripts the blocks name
resolve, and what the blocks write (``runs/``, reports, bench records, figures) lands in the
scratch folder, never in the repository (checked against ``git status`` after every block).
The commands scale with shell defaults (``trainer.max_steps=${STEPS:-2000}``,
``n=${N:-1000}``, ``bench.repeats=${REPEATS:-5}``); here ``STEPS``, ``N`` and ``REPEATS``
make them tiny, on small generated MNIST and FashionMNIST (``DIFFUSION_DATA``) with a scratch
``DIFFUSION_CACHE`` and W&B off. Blocks read what the earlier blocks of their README wrote,
so asking for one block (``-k``) runs the blocks before it first, once per session.

Blocks that need what the machine may lack are skipped, saying why: a CUDA device (the
blocks under a heading that names a GPU, or with ``trainer.device=cuda``), diffusers (the
blocks that name it), the real Flowers102 (``data=flowers102``: torchvision accepts the tiny
copy only inside the test process). ``test_skipped_block_composes`` still checks those:
every ``python -m diffusion.*`` command composes its config (``--cfg job``: Hydra checks every
key, nothing runs; a ``-m`` sweep as its first job), every script passes ``bash -n`` or
``py_compile`` and ``python -m pytest`` collects.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from diffusion.data.synthetic import write_tiny_mnist

REPO = Path(__file__).resolve().parents[1]
SMOKE = {"STEPS": "4", "N": "16", "REPEATS": "1",
         # experiments/gpu/session.sh's own knobs: every stage shrunk, minutes not ten
         "QUICK": "1", "DEADLINE": "240", "TRAIN_END": "90"}
LINKED = ("src", "conf", "tests", "pyproject.toml")
TINY_IMAGES = 160  # per split: experiments/image_folder benches batch 128 of the test split
BLOCK_TIMEOUT_S = 1800
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
HEADING = re.compile(r"^#{1,6}\s+(.*)")


@dataclass(frozen=True)
class Block:
    readme: str  # the experiment folder's name
    index: int   # 1-based, in README order
    heading: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.readme}-block{self.index}"


def extract_blocks(readme: Path) -> list[Block]:
    """The README's ```bash blocks (also those indented under a list item, dedented), each
    with the heading above it."""
    blocks, heading, inside, indent, lines = [], "", None, "", []
    for line in readme.read_text().splitlines():
        fence = FENCE.match(line)
        if inside is None:
            if fence and fence.group(2):
                inside, indent, lines = fence.group(2), fence.group(1), []
            elif (match := HEADING.match(line)) is not None:
                heading = match.group(1)
        elif fence and not fence.group(2):
            if inside == "bash":
                blocks.append(Block(readme.parent.name, len(blocks) + 1, heading,
                                    "\n".join(lines) + "\n"))
            inside = None
        else:
            lines.append(line.removeprefix(indent))
    return blocks


def all_blocks() -> list[Block]:
    return [b for readme in sorted((REPO / "experiments").glob("*/README.md"))
            for b in extract_blocks(readme)]


BLOCKS = all_blocks()


def real_flowers() -> Path | None:
    """A real Flowers102 (``flowers-102/``) under ``$DIFFUSION_DATA`` or ``../shared/data``."""
    for root in (os.environ.get("DIFFUSION_DATA"), REPO.parent / "shared" / "data"):
        if root and (Path(root) / "flowers-102" / "setid.mat").is_file():
            return Path(root) / "flowers-102"
    return None


def skip_reason(block: Block) -> str | None:
    """Why this machine cannot run the block, or None."""
    import torch

    if ("GPU" in block.heading or "trainer.device=cuda" in block.text) \
            and not torch.cuda.is_available():
        return f"needs a CUDA device (under '{block.heading}')"
    if "diffusers" in block.text and importlib.util.find_spec("diffusers") is None:
        return "needs diffusers (pip install -e '.[bench]')"
    if "data=flowers102" in block.text and real_flowers() is None:
        return ("needs the real Flowers102 under $DIFFUSION_DATA or ../shared/data "
                "(torchvision accepts the tiny copy only inside the test process)")
    return None


def git_status() -> str | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@dataclass
class Workspace:
    """One README's scratch repository root and which of its blocks ran."""

    root: Path
    env: dict
    results: dict[int, tuple[int, str, float]] = field(default_factory=dict)

    def run(self, block: Block, dry: bool = False) -> tuple[int, str, float]:
        script = (DRY_PRELUDE if dry else "") + block.text
        start = time.perf_counter()
        try:
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.root,
                                  env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S)
            rc, out = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            rc, out = 124, f"timed out after {BLOCK_TIMEOUT_S} s\n{exc.output or ''}"
        return rc, out, time.perf_counter() - start

    def run_through(self, block: Block) -> tuple[int, str, float]:
        """Run the README's blocks before ``block`` that have not run (failing if one
        fails), then ``block`` itself."""
        for earlier in BLOCKS:
            if earlier.readme != block.readme or earlier.index >= block.index:
                continue
            if earlier.index not in self.results and skip_reason(earlier) is None:
                self.results[earlier.index] = self.run(earlier)
            rc, out, _ = self.results.get(earlier.index, (0, "", 0.0))
            if rc != 0:
                pytest.fail(f"{earlier.id}, which {block.id} follows, failed (exit {rc}):\n"
                            f"{tail(out)}", pytrace=False)
        self.results[block.index] = self.run(block)
        return self.results[block.index]


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def scratch_root(path: Path) -> Path:
    """A stand-in for the repository root: experiments/ copied, the rest linked."""
    root = path / "repo"
    shutil.copytree(REPO / "experiments", root / "experiments")
    for name in LINKED:
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    return root


@pytest.fixture(scope="session")
def experiment_data(tmp_path_factory) -> Path:
    """Tiny MNIST and FashionMNIST, and the real Flowers102 linked in where there is one."""
    root = tmp_path_factory.mktemp("experiment-data")
    for kind in ("MNIST", "FashionMNIST"):
        write_tiny_mnist(root, n_train=TINY_IMAGES, n_test=TINY_IMAGES, kind=kind)
    if (flowers := real_flowers()) is not None:
        (root / "flowers-102").symlink_to(flowers)
    return root


@pytest.fixture(scope="session")
def workspaces(tmp_path_factory, experiment_data):
    made: dict[str, Workspace] = {}

    def get(readme: str) -> Workspace:
        if readme not in made:
            path = tmp_path_factory.mktemp(f"experiment-{readme}")
            root = scratch_root(path)
            (path / "tmp").mkdir()
            python = str(Path(sys.executable).parent)  # `python` is this interpreter
            pythonpath = os.pathsep.join(p for p in (str(REPO / "src"),
                                                     os.environ.get("PYTHONPATH")) if p)
            env = {**os.environ, **SMOKE, "PATH": python + os.pathsep + os.environ["PATH"],
                   "PYTHONPATH": pythonpath, "DIFFUSION_DATA": str(experiment_data),
                   "DIFFUSION_CACHE": str(path / "cache"), "DIFFUSION_RUNS": str(root / "runs"),
                   "TMPDIR": str(path / "tmp"), "WANDB_MODE": "disabled",
                   "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                   "HYDRA_FULL_ERROR": "1", "DRY_HELPER": str(Path(__file__).resolve())}
            made[readme] = Workspace(root, env)
        return made[readme]

    return get


@pytest.fixture(scope="session")
def repo_status():
    return git_status()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_block_is_bash(block):
    """Every block parses (``bash -n``)."""
    proc = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_block_runs(block, workspaces, repo_status):
    """The block exits with 0, tiny, after the blocks before it, writing nothing into the
    repository."""
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    rc, out, seconds = workspaces(block.readme).run_through(block)
    print(f"{block.id}: exit {rc} in {seconds:.0f} s")
    assert rc == 0, f"{block.id} failed (exit {rc}) after {seconds:.0f} s:\n{block.text}\n" \
                    f"{tail(out)}"
    if repo_status is not None:
        assert git_status() == repo_status, f"{block.id} wrote into the repository"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if skip_reason(b) is not None],
                         ids=lambda b: b.id)
def test_skipped_block_composes(block, workspaces):
    """A block this machine cannot run still names real keys and parses: its diffusion
    commands compose (``--cfg job``), its scripts compile, its pytest line collects."""
    rc, out, seconds = workspaces(block.readme).run(block, dry=True)
    assert rc == 0, f"{block.id} does not compose (exit {rc}):\n{block.text}\n{tail(out)}"


# The dry run: `python` and `bash` stand in for themselves, checking instead of running.
DRY_PRELUDE = """\
python() { command python "$DRY_HELPER" "$@"; }
bash() { command bash -n "$@"; }
"""


def compose_only(argv: list[str]) -> int:
    """What ``python <argv>`` would be checked with in a dry run (see ``DRY_PRELUDE``)."""
    if argv[:1] == ["-c"] or argv[:2] == ["-m", "pip"]:
        return 0
    if argv[:2] == ["-m", "pytest"]:
        return subprocess.call([sys.executable, *argv, "--collect-only", "-q"],
                               stdout=subprocess.DEVNULL)
    if argv[:1] == ["-m"] and argv[1].startswith("diffusion."):
        module, args = argv[1], argv[2:]
        if "-m" in args or "--multirun" in args:  # Hydra composes a sweep's jobs one by one
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            args = [a for a in args if a not in ("-m", "--multirun")]
            overrides = OverridesParser.create().parse_overrides(args)
            args = list(BasicSweeper.split_arguments(overrides, None)[0][0])
        return subprocess.call([sys.executable, "-m", module, *args, "--cfg", "job"],
                               stdout=subprocess.DEVNULL)
    if argv[:1] == ["-m"]:
        return subprocess.call([sys.executable, *argv, "--help"], stdout=subprocess.DEVNULL)
    return subprocess.call([sys.executable, "-m", "py_compile", argv[0]])


if __name__ == "__main__":
    raise SystemExit(compose_only(sys.argv[1:]))
