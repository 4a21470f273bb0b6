"""The layout's rules, read off the source: no import cycles, the domain imports nothing above it, one PJSUA2 user.

Every import counts, also those inside functions and under TYPE_CHECKING: a
cycle hidden in a function is still a cycle for whoever reads the code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("softswitch", "media", "ivr", "storage")
# The parts of the tree as the architecture draws them; a module belongs to the longest that prefixes it.
PARTS = ("softswitch", "softswitch.domain", "softswitch.config", "softswitch.protocol", "softswitch.logs",
         "softswitch.worker",
         "softswitch.control", "softswitch.web", "softswitch.cli", "ivr", "media", "storage")
# What each part may import, beyond itself and the standard library and third-party packages.
ALLOWED = {
    "softswitch": set(),
    "softswitch.domain": set(),
    "softswitch.protocol": set(),
    "softswitch.logs": set(),
    "softswitch.config": {"softswitch.domain"},
    "media": set(),
    "storage": {"softswitch.domain"},
    "ivr": {"softswitch.domain", "softswitch.config", "media", "storage"},
    "softswitch.worker": {"softswitch.protocol", "softswitch.logs", "media"},
    "softswitch.web": {"softswitch.domain", "softswitch.config", "media", "storage"},
    "softswitch.control": {"softswitch.domain", "softswitch.config", "softswitch.protocol", "softswitch.logs",
                           "softswitch.web",
                           "softswitch.worker", "ivr", "media", "storage"},
    "softswitch.cli": {"softswitch.domain", "softswitch.config", "softswitch.logs", "softswitch.control",
                       "softswitch.web",
                       "softswitch.worker", "media", "storage"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (absolute names; ``from x import y`` gives x.y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
            yield from submodules or [module]


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _part(module: str) -> str:
    return max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len, default=module)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_a_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_part_imports_itself_round_a_cycle() -> None:
    parts: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        parts.setdefault(_part(module), set()).update(_part(t) for t in targets if _part(t) != _part(module))
    assert _cycles(parts) == []


def test_each_part_imports_only_what_it_may() -> None:
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in _graph().items() for target in targets
                   if _part(target) != _part(module) and _part(target) not in ALLOWED[_part(module)])
    assert wrong == []


def test_every_module_belongs_to_a_part() -> None:
    assert sorted(m for m in MODULES if _part(m) not in ALLOWED) == []


def test_only_the_worker_loads_pjsua2() -> None:
    users = sorted(name for name, path in MODULES.items() if "pjsua2" in set(_imports(name, path)))
    assert users and all(_part(name) == "softswitch.worker" for name in users), users


def test_nothing_in_the_product_imports_the_tests_or_the_bench() -> None:
    wrong = sorted(f"{name} imports {m}" for name, path in MODULES.items() for m in _imports(name, path)
                   if m.split(".")[0] in ("tests", "bench"))
    assert wrong == []
