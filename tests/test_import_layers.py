"""The package's import graph: no cycle, and no module imports a layer above its own.

Every ``import``/``from ... import`` of a ``speed`` module counts, including those inside
functions (a lazy import is still a dependency).  Layers, low to high (docs/architecture.md):

0. foundations: errors, validation, fsutil, journal, messages, jsonable, machine, exitstatus
1. ``speed.privacy`` (mechanisms, accounting, ledger: pure maths and small typed objects)
2. ``speed.crypto`` (circuits; the noise bound comes from privacy)
3. the parties and their parameters: params, holder, server, owner, protocol
4. ``speed.learning``
5. the in-process entry points: pipeline (the demo), api
6. reproduce, deploy (Flower apps), bench
7. ``speed.cli``; the package root ``speed`` (lazy exports) on top
"""

from __future__ import annotations

import ast
from pathlib import Path

import speed

ROOT = Path(speed.__file__).parent

LAYERS = {
    "speed.errors": 0, "speed.validation": 0, "speed.fsutil": 0, "speed.journal": 0, "speed.journal_cli": 0,
    "speed.messages": 0, "speed.jsonable": 0, "speed.machine": 0, "speed.exitstatus": 0, "speed.pytest_plugin": 0,
    "speed.privacy": 1, "speed.crypto": 2,
    "speed.params": 3, "speed.holder": 3, "speed.server": 3, "speed.owner": 3, "speed.protocol": 3,
    "speed.learning": 4, "speed.pipeline": 5, "speed.api": 5,
    "speed.reproduce": 6, "speed.deploy": 6, "speed.bench": 6, "speed.cli": 7, "speed": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("speed", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} has no layer: add it to LAYERS (and docs/architecture.md)")


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod and t.startswith("speed"):
                    graph[mod].add(t)
    return graph


def test_every_module_has_a_layer():
    for mod in _modules():
        _layer(mod)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
            for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_upward_import():
    assert _upward(_graph()) == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_checks_can_fail():
    graph = _graph()
    assert "speed.privacy.pld" in graph["speed.privacy.calibrate"]  # lazy imports inside functions count
    assert "speed.learning.features" in graph["speed.reproduce.teachers"]
    assert _upward({"speed.privacy.pld": {"speed.cli.options"}}) == [
        "speed.privacy.pld (layer 1) imports speed.cli.options (layer 7)"]
    assert _cycles({"speed.a": {"speed.b"}, "speed.b": {"speed.a"}}) == [["speed.a", "speed.b", "speed.a"]]
