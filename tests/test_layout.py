"""The import graph of ``diffrec_jax`` holds its shape (CONTRIBUTING.md, "Where things live").

Read from the source (every import, function-level ones included), without importing anything:

* the functional core imports nothing of the library but the core;
* models, data and the shared pieces never import training, inference, serving or launchers;
* no private name (``_x``) is imported from another module;
* no import circle among the library's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "diffrec_jax"
CORE = {"diffrec_jax.schedules", "diffrec_jax.diffusion", "diffrec_jax.timesteps", "diffrec_jax.samplers"}
UPPER = ("diffrec_jax.training", "diffrec_jax.inference", "diffrec_jax.export", "diffrec_jax.serving",
         "diffrec_jax.cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of ``diffrec_jax`` in a module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("diffrec_jax")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("diffrec_jax"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, None) if sub in MODULES else (node.module, a.name))
    return out


def _target(mod: str) -> str:
    """The module file an import resolves to (a name inside a module resolves to that module)."""
    while mod not in MODULES and "." in mod:
        mod = mod.rsplit(".", 1)[0]
    return mod


def test_the_core_imports_only_the_core():
    for name in CORE:
        for mod, _ in _imports(name):
            assert _target(mod) in CORE, f"{name} imports {mod}: the core must not depend on the library"


@pytest.mark.parametrize("layer", ["diffrec_jax.models", "diffrec_jax.data", "diffrec_jax.metrics",
                                   "diffrec_jax.checkpointing"])
def test_lower_layers_never_import_training_or_above(layer):
    for name in MODULES:
        if name == layer or name.startswith(layer + "."):
            for mod, _ in _imports(name):
                assert not mod.startswith(UPPER), f"{name} imports {mod}: an arrow back up"


def test_no_private_name_is_imported_across_modules():
    for name in MODULES:
        for mod, imported in _imports(name):
            if imported is not None:
                assert not imported.startswith("_"), f"{name} imports the private {mod}.{imported}"


def test_no_import_circle():
    graph = {name: {_target(mod) for mod, _ in _imports(name)} - {name} for name in MODULES}
    # a package's __init__ importing its own submodules is its face, not a circle
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if m.startswith(n + "."):
                continue  # package -> own submodule
            if state.get(m) == 1:
                cyc = path[path.index(m):] + [m]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(cyc, cyc[1:])):
                    raise AssertionError("import circle: " + " -> ".join(cyc))
            elif state.get(m) is None:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
