"""The package's shape: entry points import downward only, no import cycle, and the command
helpers stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import diffusion

SRC = Path(diffusion.__file__).parent
ENTRY_POINTS = {"diffusion.train", "diffusion.sample", "diffusion.evaluate",
                "diffusion.visualize", "diffusion.report", "diffusion.bench",
                "diffusion.samplers_oracle", "diffusion.edit", "diffusion.train_classifier"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("diffusion", *path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules imported at the top level, modules imported inside a function)."""
    eager, lazy = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            targets = [n if n in modules else node.module for n in names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("diffusion"):
                (eager if node.col_offset == 0 else lazy).add(target)
    return eager, lazy


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def test_the_module_graph_has_no_cycle_and_no_library_module_imports_an_entry_point():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        eager, lazy = _imports(path, modules)
        if name not in ENTRY_POINTS:
            assert not (eager | lazy) & ENTRY_POINTS, f"{name} imports an entry point"
        # importing a.b.c runs a/__init__ and a/b/__init__ first, except one's own packages
        graph[name] = set().union(*map(_with_parents, eager)) - _with_parents(name) \
            if eager else set()
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in graph.get(name, ()):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*stack, name, dep])
            if dep in graph and not state.get(dep):
                visit(dep, [*stack, name])
        state[name] = 2

    for name in graph:
        if not state.get(name):
            visit(name, [])


def test_library_imports_inside_functions_are_only_optional_dependencies():
    """A function-level import of the package's own modules would hide a cycle."""
    modules = _modules()
    for name, path in modules.items():
        _, lazy = _imports(path, modules)
        allowed = {"diffusion.commands.benchmarks.diffusers_side"}  # needs the optional diffusers
        assert lazy <= allowed, f"{name} imports {sorted(lazy - allowed)} inside a function"


def test_the_command_helpers_do_not_load_the_trainer():
    code = ("import diffusion.commands.launcher, diffusion.errors, sys; "
            "print(sorted(m for m in sys.modules if m in {'diffusion.training.trainer', "
            "'diffusion.sampling.pipeline', 'diffusion.data', 'diffusion.reporting.figures'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
