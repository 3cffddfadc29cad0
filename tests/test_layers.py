"""The package's layers (README "Layout"): each imports only the layers below it, and nothing imports in a cycle.

Imports inside functions count like any other: one placed there to dodge a cycle is a cycle all the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "zoo"
# Bottom to top. A module belongs to the layer that names it or a package above it ("zoo" is the package itself).
LAYERS = [
    ("convert, registry", ("zoo.convert", "zoo.registry", "zoo.version", "zoo.models")),
    ("weights", ("zoo.weights",)),
    ("modeling", ("zoo.modeling",)),
    ("publish", ("zoo.publish",)),
    ("tasks", ("zoo.tasks",)),
    ("cli, package", ("zoo.cli", "zoo.__main__", "zoo")),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "models" not in p.relative_to(ROOT).parts}


def _layer(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or (n != "zoo" and module.startswith(n + ".")) for n in names):
            return i
    raise AssertionError(f"{module} belongs to no layer: put it in zoo/weights, zoo/modeling, zoo/publish or zoo/tasks "
                         "(or add it to LAYERS and README's Layout)")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The zoo modules ``module`` imports explicitly, at the top or inside functions (a package's own
    __init__, which Python runs first, is not counted: it is the package's choice what that holds)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` names a submodule where there is one, else something the package defines.
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "zoo" or target.startswith("zoo."):
                while target not in known and "." in target:  # zoo.models.<name>: generated, no file here
                    target = target.rpartition(".")[0]
                found.add(target)
    return found - {module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules) | {"zoo.models"}) for m, p in modules.items()}


def test_every_module_is_in_a_layer():
    assert {_layer(m) for m in _modules()} >= {0, 1, 2, 3, 5}


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_each_layer_imports_only_the_layers_below_it(layer):
    index = [name for name, _ in LAYERS].index(layer)
    upward = sorted(f"{m} imports {t} ({LAYERS[_layer(t)][0]})" for m, targets in _graph().items()
                    if _layer(m) == index for t in targets if _layer(t) > index)
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The checks above would pass vacuously if the walk missed what they look for."""
    source = "import os\nfrom ..weights import pretrained\n\ndef f():\n    from ..publish.hub import push_to_hub\n"
    (tmp_path / "m.py").write_text(source)
    found = _imports("zoo.modeling.m", tmp_path / "m.py", {"zoo.weights.pretrained", "zoo.publish.hub"})
    assert found == {"zoo.weights.pretrained", "zoo.publish.hub"}
    assert _layer("zoo.publish.hub") > _layer("zoo.modeling.m") > _layer("zoo.weights.pretrained")
