"""The layers depend one way: no import cycle between modules or between packages of
ebpflb, and the lower layers never import the upper ones (read from the source with
ast, so a cycle hidden inside a function body counts too; only `if TYPE_CHECKING:`
imports are left out, as they never run)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package (or module) -> what it must never import, directly or not
FORBIDDEN = {
    "ebpflb.model": {
        "ebpflb.plan",
        "ebpflb.sources",
        "ebpflb.sync",
        "ebpflb.dataplane",
        "ebpflb.agent",
        "ebpflb.cli",
        "ebpflb.lab",
    },
    "ebpflb.plan": {
        "ebpflb.sources",
        "ebpflb.sync",
        "ebpflb.dataplane",
        "ebpflb.agent",
        "ebpflb.cli",
        "ebpflb.lab",
    },
    "ebpflb.sources": {
        "ebpflb.sync",
        "ebpflb.dataplane",
        "ebpflb.agent",
        "ebpflb.cli",
        "ebpflb.lab",
    },
    "ebpflb.sync": {"ebpflb.agent", "ebpflb.cli", "ebpflb.lab", "ebpflb.sources"},
    "ebpflb.dataplane": {"ebpflb.sync", "ebpflb.sources", "ebpflb.agent", "ebpflb.cli"},
    "ebpflb.agent": {"ebpflb.cli", "ebpflb.lab"},
}
# the pure core: no bcc, pyroute2 or kubernetes client, so it runs anywhere
PURE = (
    "ebpflb.model",
    "ebpflb.plan",
    "ebpflb.sources.translate",
    "ebpflb.sources.tracker",
    "ebpflb.sync.diff",
    "ebpflb.errors",
)
FOREIGN = ("bcc", "pyroute2", "kubernetes")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`, by dotted name."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules `name` imports (anything, at any depth of the file), by dotted name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text()).body)
    return found


def graph(root: Path, package: str, depth: int | None = None) -> dict[str, set[str]]:
    """Import edges between the modules of `package` (or, with `depth`, between its
    dotted prefixes of that many parts: `depth=2` gives ebpflb.sync -> ebpflb.model)."""
    modules = module_files(root, package)

    def node(name: str) -> str:
        return ".".join(name.split(".")[:depth]) if depth else name

    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target in imports_of(name, path, modules):
            if target.split(".")[0] != package or target == package:
                continue
            a, b = node(name), node(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def reachable(edges: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("depth", [None, 2, 3], ids=["modules", "packages", "subpackages"])
def test_no_import_cycle(depth: int | None) -> None:
    assert cycles(graph(ROOT, "ebpflb", depth)) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(layer: str) -> None:
    edges = graph(ROOT, "ebpflb", depth=len(layer.split(".")))
    reached = {".".join(m.split(".")[:2]) for m in reachable(edges, layer)}
    assert reached & FORBIDDEN[layer] == set()


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_kernel_or_cluster_library(module: str) -> None:
    modules = module_files(ROOT, "ebpflb")
    edges = graph(ROOT, "ebpflb")
    everything = {module} | reachable(edges, module)
    foreign = {
        imp
        for name in everything
        if name in modules
        for imp in imports_of(name, modules[name], modules)
        if imp.split(".")[0] in FOREIGN
    }
    assert foreign == set()


def test_the_checker_finds_a_cycle_and_ignores_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "demo"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from demo.high import b\n")
    (pkg / "high.py").write_text("from .low import a\n")
    (pkg / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo import high\n"
    )
    assert cycles(graph(tmp_path, "demo")) == [["demo.high", "demo.low.a"]]
    assert cycles(graph(tmp_path, "demo", depth=2)) == [["demo.high", "demo.low"]]
    assert "demo.typed" not in graph(tmp_path, "demo")
