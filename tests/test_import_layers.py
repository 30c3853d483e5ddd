"""No import circles: every ``import`` in a package's modules (module level or inside a function)
forms a graph among the project's modules, and that graph has no cycle touching the package.

Issue 12: ``filters/runner.py`` imported the CLI module ``filters/stage.py`` for ``FilterConfig``,
which imports the runner. ``filters`` has none; ``pipeline`` may hold only the circles listed in
``KNOWN_PIPELINE_CYCLES`` (each to be removed by its owner): a new one fails the test, and so
does a listed one that is gone (take it off the list, so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["filters"]
KNOWN_PIPELINE_CYCLES: set[frozenset[str]] = set()  # none left


def import_graph() -> dict[str, set[str]]:
    mods = {}
    for pkg in ("pipeline", "filters"):
        for f in (REPO / pkg).rglob("*.py"):
            mods[".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[m].update(n for n in names if n in mods and n != m)
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start through the graph, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph()
    cycles = [c for m in sorted(graph) if m.split(".")[0] == package and (c := cycle_from(graph, m))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def cycles_of(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[frozenset[str]] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.add(frozenset(comp))
    return out


def test_pipeline_holds_only_the_known_cycles():
    found = {c for c in cycles_of(import_graph()) if any(m.startswith("pipeline.") for m in c)}
    new = [sorted(c) for c in found - KNOWN_PIPELINE_CYCLES]
    gone = [sorted(c) for c in KNOWN_PIPELINE_CYCLES - found]
    assert not new, f"new import cycles in pipeline/: {new}"
    assert not gone, f"these cycles are gone: take them off KNOWN_PIPELINE_CYCLES: {gone}"


def test_the_check_finds_a_cycle():
    assert cycles_of({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert cycles_of({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}) == {frozenset("ab"), frozenset("cd")}
    assert cycles_of({"a": {"b"}, "b": set()}) == set()
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}, "a") is None
