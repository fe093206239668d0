"""The tree keeps the shape README's "Layout" promises, read from the code's own imports.

- Dependencies point inward: api → broker ← workers. broker/cli/ is the one composition root,
  the only place that imports api/ and workers/; nothing else in broker/ imports upward.
- No import cycles between the project's modules, deferred imports (inside functions) included:
  a cycle hidden by a deferred import is still a cycle. Imports under TYPE_CHECKING do not run
  and do not count; `from package import submodule` depends on the submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "broker", "workers")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and getattr(test, "id", getattr(test, "attr", "")) == "TYPE_CHECKING":
            lines |= {inner.lineno for part in node.body for inner in ast.walk(part) if hasattr(inner, "lineno")}
    return lines


def _owner(module: str) -> str | None:
    """The project module that `module` names, or its nearest package; None outside the project."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
            found |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {owner for module in found if (owner := _owner(module)) and owner != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(GRAPH[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_import_graph_sees_the_project() -> None:
    # Guards the checks below against passing on an empty or misread graph.
    assert {"broker.queue.jobs", "api.app", "workers.loop", "broker.cli.main"} <= set(GRAPH)
    assert "broker.queue.jobs" in GRAPH["workers.loop"] and "workers.loop" in GRAPH["broker.cli.dev"]


def test_there_are_no_import_cycles() -> None:
    assert _cycles() == []


def test_broker_imports_neither_api_nor_workers_but_in_its_cli() -> None:
    upward = {name: sorted(dep for dep in deps if dep.split(".")[0] in ("api", "workers"))
              for name, deps in GRAPH.items() if name.startswith("broker") and not name.startswith("broker.cli")}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_the_api_never_imports_a_worker_and_a_worker_never_imports_the_api() -> None:
    assert not [name for name, deps in GRAPH.items() if name.startswith("api") and any(
        d.startswith("workers") for d in deps)]
    assert not [name for name, deps in GRAPH.items() if name.startswith("workers") and any(
        d.startswith("api") for d in deps)]


def test_a_cycle_hidden_by_a_deferred_import_is_found() -> None:
    GRAPH["broker.keys"] = GRAPH["broker.keys"] | {"broker.queue.jobs"}  # as a function-level import would add
    try:
        assert any({"broker.keys", "broker.queue.jobs"} <= set(cycle) for cycle in _cycles())
    finally:
        GRAPH["broker.keys"] = imports_of("broker.keys")
