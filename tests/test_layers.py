"""The package's shape: no import cycles (imports inside functions count) and layers that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import gptforge

PACKAGE = Path(gptforge.__file__).parent
FOUNDATION = {"config", "errors", "fmt", "progress", "fsutil"}
# what each layer may import besides itself and the foundation
ALLOWED = {
    "data": set(),
    "model": set(),
    "train": {"data", "model"},
    "analysis": {"data", "model", "train"},
    "interop": {"data", "model", "train"},
    "commands": {"data", "model", "train", "analysis", "interop"},
    "cli": {"data", "model", "train", "analysis", "interop", "commands"},
    "entry": {"cli"},
    "__main__": {"entry"},
}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its body (functions included)."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and t != "gptforge":
                    deps.add(t)
        graph[name] = deps
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_point_one_way():
    bad = []
    for module, deps in import_graph().items():
        own = layer(module)
        for dep in deps:
            other = layer(dep)
            if other in FOUNDATION or other == own:
                continue
            allowed = set() if own in FOUNDATION else ALLOWED.get(own, set())
            if other not in allowed:
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_the_loop_is_imported_only_by_commands():
    importers = {m for m, deps in import_graph().items() if "gptforge.train.loop" in deps}
    assert importers <= {"gptforge.cli", "gptforge.commands.demo", "gptforge.interop.nanogpt"} | {
        m for m in importers if m.startswith("gptforge.commands")}, sorted(importers)


def test_no_module_shadows_the_standard_library():
    import sys

    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    assert not names & set(sys.stdlib_module_names), sorted(names & set(sys.stdlib_module_names))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
