"""The package's layout holds (README, "Architecture"): what import-linter does not check.

``make lint`` runs the layers and independence contracts (``lint-imports``, in pyproject). Here:
no import circle at run time between modules, no private name imported from another module,
and few modules directly in ``tmlab/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

import tmlab

ROOT = Path(tmlab.__file__).parent
PACKAGES = ("tmlab.client", "tmlab.analysis", "tmlab.jupyter", "tmlab.server")


def _package(module: str) -> str:
    """The package a module belongs to: one of PACKAGES, or ``tmlab`` (the core)."""
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), "tmlab")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circle_at_run_time() -> None:
    graph = grimp.build_graph("tmlab", exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above can fail: a graph with a circle is reported."""
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    """What modules share is public (named without ``_``, documented): no module reaches into
    another's privates, within a package or across."""
    crossing = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("tmlab"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    where = (
                        "another package"
                        if _package(str(node.module)) != _package(module)
                        else "its package"
                    )
                    crossing.append(f"{module} imports {node.module}.{alias.name} ({where})")
    assert crossing == []


def test_the_core_stays_small() -> None:
    """At most a dozen modules directly in tmlab/: the rest lives in its layer's package."""
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top
