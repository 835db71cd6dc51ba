"""The harness's modules import one another without cycles, counting the imports inside functions too.

A function-level import is still a dependency: ``config`` once imported ``builders`` inside a validator
while ``builders`` imported ``config``. Only imports under ``if TYPE_CHECKING:`` (types, never run)
are left out. The graph is read from the source with ``ast``; no module is imported.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def module_names() -> dict[str, Path]:
    """Every module of the harness by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The harness modules one module imports (absolute or relative, at any depth, TYPE_CHECKING excluded)."""

    def __init__(self, name: str, is_package: bool, known: dict[str, Path]) -> None:
        self.package = name.split(".") if is_package else name.split(".")[:-1]
        self.known = known
        self.found: set[str] = set()

    def _add(self, module: str) -> None:
        if module in self.known:
            self.found.add(module)

    def visit_If(self, node: ast.If) -> None:
        for child in node.orelse if _is_type_checking(node) else [node.test, *node.body, *node.orelse]:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package[: len(self.package) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        for alias in node.names:  # `from pkg import submodule` depends on the submodule
            full = f"{base}.{alias.name}"
            self._add(full if full in self.known else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the harness modules it imports (a module's own package is not counted as a dependency)."""
    known = module_names()
    graph = {}
    for name, path in known.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[name] = visitor.found - {name}
    return graph


def test_the_graph_sees_top_level_and_function_level_imports() -> None:
    graph = import_graph()
    assert "harness.optimizers" in graph["harness.builders"]  # at module level
    assert "harness.optimizers" in graph["harness.config.schema"]  # inside a validator
    assert "harness.config" not in graph["harness.optimizers"]  # only under TYPE_CHECKING there


def test_no_import_cycles_among_harness_modules() -> None:
    order = list(graphlib.TopologicalSorter(import_graph()).static_order())  # CycleError names the cycle
    assert order.index("harness.errors") < order.index("harness.registry") < order.index("harness.builders")
