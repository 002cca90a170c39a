"""The package's shape: imports go down the layers (README, Development), never up or
sideways, and no module imports itself back through others. Function-level imports count, and
so do the imports a package makes by discovering its folder."""

from __future__ import annotations

import ast
from pathlib import Path

import kdrun

PACKAGE = Path(kdrun.__file__).parent

# Bottom first; a module may import its own unit (package or module) and units of lower layers.
LAYERS = [
    {"errors"},
    {"config", "registry", "checks"},
    {"runtime"},
    {"data", "models"},
    {"methods", "evaluation", "sinks", "weights"},
    {"training"},
    {"validate", "options", "report", "summary", "usage"},
    {"sweep"},
    {"jobs", "outcome"},
    {"launchers"},
    {"cli"},
    {"__main__"},
]


def modules() -> dict[str, Path]:
    """Every module of kdrun by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["kdrun", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """kdrun modules `path` imports anywhere in it, as module names (a name imported from a
    package that is itself a module counts as that module)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in known else node.module)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "discover", "register_subclasses"):  # every module of its own folder
            package = ".".join(modules_key(path))
            names.update(m for m in known if m.rsplit(".", 1)[0] == package
                         and not m.rsplit(".", 1)[1].startswith("_"))
    return {n for n in map(unaliased, names) if n in known}


# kdrun's folders that ship under another name too (pyproject.toml's package-dir)
ALIASES = {"hydra_plugins.kdrun_launchers": "kdrun.launchers"}


def unaliased(name: str) -> str:
    for alias, real in ALIASES.items():
        if name == alias or name.startswith(f"{alias}."):
            return real + name[len(alias):]
    return name


def modules_key(path: Path) -> list[str]:
    parts = ["kdrun", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) - {name} for name, path in found.items()}


def unit(module: str) -> str:
    """The layer unit a module belongs to: kdrun.methods.kd -> methods."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kdrun"


def layer(module: str) -> int:
    if module == "kdrun":
        return -1  # the package's own __init__: a docstring and a version
    return next(i for i, units in enumerate(LAYERS) if unit(module) in units)


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "kdrun" and not any(unit(m) in u for u in LAYERS)]
    assert unplaced == []


def test_imports_go_down_the_layers():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if unit(a) != unit(b) and layer(b) >= layer(a)]
    assert upward == []


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    done: set[str] = set()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_the_graph_sees_function_level_and_discovery_imports():
    graph = import_graph()
    assert "kdrun.jobs" in graph["kdrun.cli"]  # imported inside a function
    assert "kdrun.sinks.wandb" in graph["kdrun.sinks"]  # discovered loggers
    assert "kdrun.evaluation.scores.knn" in graph["kdrun.evaluation.scores"]
    assert "kdrun.sinks.tensorboard" in graph["kdrun.sinks"]
    assert "kdrun.methods.kd" in graph["kdrun.methods"]  # discovered, not listed
    assert "kdrun.data.sets.cifar10" in graph["kdrun.data.sets"]
    assert "kdrun.models.zoo.wrn" in graph["kdrun.models.zoo"]
