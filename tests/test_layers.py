"""The imports obey the layers, and the module graph has no cycle.

From the top: the entry points (`commands`, which may start `http` and `worker`; those two never
import each other), `processing`, the `handlers`, the `store`, the `model` primitives, and the
ground (outages, signatures, then logging, then settings). A module imports only its own layer or lower
ones, not even inside a function; what a lower layer needs from a higher one is handed to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom. Within one entry (say `http`), modules import each other freely.
LAYERS: list[tuple[str, ...]] = [
    ("stripeline.__main__",),
    ("stripeline.commands",),
    ("stripeline.http", "stripeline.worker"),
    ("stripeline.processing",),
    ("stripeline.handlers",),
    ("stripeline.store",),
    ("stripeline.model",),
    ("stripeline.outages", "stripeline.garbage", "stripeline.signature", "stripeline.event_loop"),
    ("stripeline.logging",),
    ("stripeline.settings", "stripeline.sql", "stripeline.clock"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "app").rglob("*.py"):
        parts = path.relative_to(ROOT / "app").with_suffix("").parts
        found[".".join(("stripeline", *parts)).removesuffix(".__init__")] = path
    for path in (ROOT / "handlers").rglob("*.py"):
        parts = path.relative_to(ROOT / "handlers").with_suffix("").parts
        found[".".join(("stripeline", "handlers", *parts)).removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of ours that `name` imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module; `from module import name`, the module.
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


def _layer(name: str) -> tuple[int, str]:
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                return level, prefix
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if name != "stripeline"}


def test_no_module_imports_a_higher_layer_or_a_sibling_entry_point():
    upward = []
    for name, targets in GRAPH.items():
        level, home = _layer(name)
        for target in targets:
            target_level, target_home = _layer(target)
            if target_level < level or (target_level == level and target_home != home):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_the_module_graph_has_no_cycle():
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []
