"""modgap's import layering, read from the source with ``ast`` (nothing of modgap is imported).

Layers, lowest first; a module imports only its own package (e.g. data.* from data.*) or modules of
its own layer or a lower one, and no set of modules imports itself round in a cycle:

    errors < config, registry, faults, runs < models < data < methods < train < report, tracking < bench, tune,
    launchers < cli, __main__ (and the package face modgap/__init__.py)

Every import counts, including the ones inside functions (a lazy import hides a dependency, it
does not remove it), except those under ``if TYPE_CHECKING:``. ``from modgap import __version__``
is the one name the package face lends to the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "modgap"

LAYERS = [["errors"], ["config", "registry", "faults", "runs"], ["models"], ["data"], ["methods"], ["train"],
          ["report", "tracking"], ["bench", "tune", "launchers"], ["cli", "__main__", "__init__"]]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
FACE_CONSTANTS = {"__version__"}


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every .py under ``root`` (a package's __init__ is the package's name)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


class _Imports(ast.NodeVisitor):
    """(module name, imported names) for each import, skipping ``if TYPE_CHECKING:`` blocks."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str, list[str]]] = []  # (level, module, names); level 0: absolute

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((0, alias.name, []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module != "__future__":
            self.found.append((node.level, node.module or "", [a.name for a in node.names]))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = find_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for level, name, names in visitor.found:
            if level:
                base = here[: len(here) - level + 1]
                name = ".".join(base + ([name] if name else []))
            if name != root.name and not name.startswith(root.name + "."):
                continue  # another package
            if not names:  # import a.b.c
                targets = [name] if name in modules else []
            else:
                targets = []
                for item in names:
                    if f"{name}.{item}" in modules:
                        targets.append(f"{name}.{item}")
                    elif not (name == root.name and item in FACE_CONSTANTS):
                        targets.append(name)
            graph[module].update(t for t in targets if t != module and t in modules)
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")[1:] or ["__init__"]
    return LAYER.get(parts[0])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a higher layer's module (a's own top-level package excepted)."""
    out = []
    for a, targets in graph.items():
        for b in targets:
            if a.split(".")[1:2] == b.split(".")[1:2]:
                continue
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                out.append(f"{a} (layer {la}) -> {b} (layer {lb})")
    return sorted(out)


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & inside))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules outside the layer order (add them to LAYERS): {unplaced}"


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_describe(c, graph) for c in found)


def test_no_upward_imports(graph):
    found = upward(graph)
    assert not found, "imports running up the layer order:\n" + "\n".join(found)


def test_runs_is_the_floor_for_files(graph):
    """The run-folder format may lean on nothing but errors, config and fault injection."""
    assert graph["modgap.runs"] <= {"modgap.errors", "modgap.config", "modgap.faults"}, graph["modgap.runs"]


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path):
    """The checks above cannot pass by seeing nothing: a made-up package with both faults."""
    pkg = tmp_path / "modgap"
    for folder in ("methods", "train"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "errors.py").write_text("from . import __version__\n")
    (pkg / "methods" / "base.py").write_text("from ..errors import x\n\ndef f():\n    from ..train import trainer\n")
    (pkg / "train" / "trainer.py").write_text("from ..methods import base\n")
    (pkg / "methods" / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                              "    from ..train import trainer\n")
    g = import_graph(pkg)
    assert g["modgap.errors"] == set()
    assert g["modgap.methods.typed"] == set()
    assert upward(g) == ["modgap.methods.base (layer 4) -> modgap.train.trainer (layer 5)"]
    assert cycles(g) == [["modgap.methods.base", "modgap.train.trainer"]]
