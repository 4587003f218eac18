"""No import cycles among the modules of tinkex_trio, except the known ones listed here (which must still exist).

Every module of the package is parsed (not imported) and every ``import`` / ``from ... import`` of a tinkex_trio module
counts, wherever it is: under ``if TYPE_CHECKING:`` (a cycle for the type checker and the reader) and inside a function
(a lazy import defers the cycle to run time, it does not remove the dependency). An import names its module, not
the packages above it: ``from tinkex_trio.types import Datum`` depends on ``tinkex_trio.types`` and not on
``tinkex_trio``, whose ``__init__`` every module runs first anyway.

A cycle is a strongly connected component of that graph with more than one module: its modules, sorted.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import tinkex_trio

KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _modules() -> dict[str, bool]:
    """Every module of the package -> whether it is a package."""
    found = {"tinkex_trio": True}
    for info in pkgutil.walk_packages(tinkex_trio.__path__, "tinkex_trio."):
        found[info.name] = info.ispkg
    return found


MODULES = _modules()


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin).read_text(encoding="utf-8")


def _imports(module: str, source: str) -> set[str]:
    """The tinkex_trio modules that ``source`` (the text of ``module``) imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.partition(".")[0] == "tinkex_trio"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of ``module`` (itself, for an __init__), up level - 1
                package = module if MODULES.get(module, False) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                target = f"{package}.{node.module}" if node.module else package
            else:
                target = node.module or ""
            if target.partition(".")[0] != "tinkex_trio":
                continue
            for alias in node.names:
                # ``from tinkex_trio import errors`` imports the module tinkex_trio.errors; ``import Session`` a name.
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    out.discard(module)
    return out


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module, _source(module)) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def successors(node: str) -> Iterator[str]:
        return iter(sorted(graph.get(node, ())))

    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, successors(root))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, successors(child)))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(tuple(sorted(component)))
    return found


def test_every_import_names_a_module_of_the_package() -> None:
    """The parser resolves every import to a real module (else a cycle through a misread import would be missed)."""
    for module, imported in _graph().items():
        assert imported <= MODULES.keys(), (module, imported - MODULES.keys())


def test_no_import_cycles_but_the_known_ones() -> None:
    cycles = _cycles(_graph())
    new = cycles - KNOWN_CYCLES
    gone = KNOWN_CYCLES - cycles
    assert not new, f"new import cycles: {sorted(new)}"
    assert not gone, f"these cycles are gone (or changed): remove them from KNOWN_CYCLES: {sorted(gone)}"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("tinkex_trio.training", "from tinkex_trio import errors, Session", {"tinkex_trio.errors", "tinkex_trio"}),
        (
            "tinkex_trio.types._training",
            "from ._base import X\nfrom .. import _public",
            {"tinkex_trio.types._base", "tinkex_trio._public"},
        ),
        (
            "tinkex_trio.types",
            "from ..errors import E\nfrom . import _codec",
            {"tinkex_trio.errors", "tinkex_trio.types._codec"},
        ),
        ("tinkex_trio.rest", "if TYPE_CHECKING:\n    from tinkex_trio._session import S", {"tinkex_trio._session"}),
        ("tinkex_trio.rest", "def f():\n    import tinkex_trio.sim._app\n    import trio", {"tinkex_trio.sim._app"}),
    ],
)
def test_imports_are_read_as_python_resolves_them(module: str, source: str, expected: set[str]) -> None:
    assert _imports(module, source) == expected


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert _cycles(graph) == {("a", "b", "c"), ("d", "e")}
