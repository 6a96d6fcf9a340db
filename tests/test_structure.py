"""The package's three layers, as rules a change cannot break unnoticed.

- Commands (``diffusion/commands/``, and the two-line ``python -m diffusion.<name>`` shims
  above them) are the top: nothing else imports them.
- Config (``diffusion/config/``) is the only other code that imports Hydra or OmegaConf.
- The library (every other package) imports neither, never the layers above it, and never
  ends the process (no ``sys.exit`` / ``SystemExit``): a notebook gets exceptions.
- No import cycle; the package's own modules are imported at the top of a file, not inside a
  function (that would hide a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import diffusion

SRC = Path(diffusion.__file__).parent
SHIMS = {"diffusion.train", "diffusion.sample", "diffusion.evaluate", "diffusion.visualize",
         "diffusion.report", "diffusion.bench", "diffusion.samplers_oracle", "diffusion.edit",
         "diffusion.train_classifier", "diffusion.export", "diffusion.reflow",
         "diffusion.train_autoencoder"}
COMPAT = {"diffusion.pipeline", "diffusion.guidance"}  # the README's older import paths
OPTIONAL = {"diffusion.commands.benchmarks.diffusers_side"}  # needs the optional diffusers


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("diffusion", *path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _layer(name: str) -> str:
    if name in SHIMS or name.startswith("diffusion.commands"):
        return "commands"
    return "config" if name.startswith("diffusion.config") else "library"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at the top level, modules imported inside a function), any package."""
    eager, lazy = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            targets = [n if n in MODULES else node.module for n in names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        (eager if node.col_offset == 0 else lazy).update(targets)
    return eager, lazy


def _own(names: set[str]) -> set[str]:
    return {n for n in names if n == "diffusion" or n.startswith("diffusion.")}


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def test_only_commands_and_config_import_hydra_or_omegaconf():
    for name, path in MODULES.items():
        if _layer(name) == "library":
            eager, lazy = _imports(path)
            hydra = sorted(m for m in eager | lazy if m.split(".")[0] in ("hydra", "omegaconf"))
            assert not hydra, f"library module {name} imports {hydra}"


def test_each_layer_imports_only_the_layers_below_it():
    below = {"commands": {"commands", "config", "library"}, "config": {"config", "library"},
             "library": {"library"}}
    for name, path in MODULES.items():
        eager, lazy = _imports(path)
        for target in _own(eager | lazy):
            allowed = below[_layer(name)] | ({"commands"} if name in COMPAT else set())
            assert _layer(target) in allowed, f"{name} ({_layer(name)}) imports {target}"


def test_the_module_graph_has_no_cycle():
    graph = {}
    for name, path in MODULES.items():
        eager = _own(_imports(path)[0])
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


def test_the_packages_own_modules_are_not_imported_inside_functions():
    for name, path in MODULES.items():
        lazy = _own(_imports(path)[1]) - OPTIONAL
        assert not lazy, f"{name} imports {sorted(lazy)} inside a function"


def test_only_commands_end_the_process():
    for name, path in MODULES.items():
        if _layer(name) == "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            exits = (isinstance(node, ast.Attribute) and node.attr == "exit"
                     and isinstance(node.value, ast.Name) and node.value.id == "sys") or (
                isinstance(node, ast.Name) and node.id == "SystemExit")
            assert not exits, f"{name} line {node.lineno} ends the process"


def _loaded_in_a_fresh_process(imports: str, modules: set[str]) -> list[str]:
    """Which of ``modules`` (or their top-level packages) ``import <imports>`` loads."""
    code = (f"import sys, {imports}; print(sorted(m for m in {sorted(modules)!r} "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return ast.literal_eval(out)


def test_the_public_api_loads_without_hydra():
    api = ("diffusion.pipeline, diffusion.guidance, diffusion.editing, diffusion.models, "
           "diffusion.schedulers, diffusion.data, diffusion.metrics, diffusion.training.trainer, "
           "diffusion.runs.load")
    assert _loaded_in_a_fresh_process(api, {"hydra", "omegaconf"}) == []


def test_the_launcher_does_not_load_the_trainer_or_the_figures():
    """It checks every job of a sweep (so it loads the config layer), but what a command
    runs stays that command's import."""
    heavy = {"diffusion.training.trainer", "diffusion.reporting.figures", "diffusion.metrics.fid"}
    assert _loaded_in_a_fresh_process("diffusion.commands.launcher", heavy) == []


def test_the_rules_see_every_layer():
    """The rules above would pass vacuously if the layers were empty or misnamed."""
    layers = {_layer(name) for name in MODULES}
    assert layers == {"commands", "config", "library"}
    assert SHIMS <= set(MODULES) and COMPAT <= set(MODULES)
