"""The layering of DESIGN.md, checked on the source: every import of ours (lazy ones inside
functions included) goes down to a strictly lower layer, or stays inside its own package."""

from __future__ import annotations

import ast
from pathlib import Path

import intertwiner

ROOT = Path(intertwiner.__file__).parent

# Lower numbers sit lower. Units of one layer never import each other.
LAYERS = {
    "errors": 0,
    "_version": 0,
    "_types": 1,
    "_atomic": 1,
    "_products": 1,
    "layouts": 1,
    "_validate": 2,
    "stats": 2,
    "groups": 3,
    "store": 3,
    "runners": 3,
    "data": 4,
    "models": 4,
    "checkpoints": 5,
    "symmetry": 5,
    "training": 6,
    "features": 6,
    "metrics": 7,
    "stitching": 8,
    "alignment": 8,
    "dissection": 8,
    "testing": 8,
    "report": 9,
    "experiments": 10,
    "cli": 11,
    "__init__": 12,
}


def _unit(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_units(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "intertwiner":
                found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("intertwiner.")}
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in ROOT.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_go_down_the_layers():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for target in _imported_units(ast.parse(path.read_text())) - {unit}:
            if target in LAYERS and LAYERS[target] >= LAYERS[unit]:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not upward, "imports that go up (or sideways):\n" + "\n".join(upward)
