"""No import circles: every module's imports, at the top or inside functions, point down (issue 22,
section 4). The graph is read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports anywhere in its body (``from . import x``
    counts as importing ``pkg.x`` when that is a module)."""
    me = module_name(path)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a name inside a module: the module itself
                name = name.rpartition(".")[0]
            if name and name != me and name.split(".")[0] == package:
                out.add(name)
    return out


def circles(package: str) -> list[list[str]]:
    """The import cycles among ``package``'s modules (strongly connected components of size > 1,
    and modules importing themselves), each as a sorted list of module names."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {m: imports_of(p, package, set(files)) for m, p in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


@pytest.mark.parametrize("package", ["training", "vsdloral"])
def test_no_import_circles(package):
    assert circles(package) == []


def test_the_task_registry_imports_no_task():
    """training.task (the base and the registry) sits below every task module."""
    modules = {module_name(p) for p in (ROOT / "training").rglob("*.py")}
    assert imports_of(ROOT / "training" / "task.py", "training", modules) <= {"training.losses"}
