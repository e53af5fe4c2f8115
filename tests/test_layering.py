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
    "_allocator": 0,
    "_types": 1,
    "_atomic": 1,
    "_products": 1,
    "layouts": 1,
    "_validate": 2,
    "stats": 2,
    "_paired": 2,
    "rows": 2,  # the result-row schema: experiments write it, report reads it
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


def _module_of(path: Path) -> list[str]:
    """The dotted package parts of a source file: src/intertwiner/metrics/cka.py -> [intertwiner,
    metrics] (the package a relative import starts from)."""
    return ["intertwiner", *path.relative_to(ROOT).parts[:-1]]


def _units_of(dotted: str, names: list[str]) -> set[str]:
    """Units named by an absolute module path (and, for ``from intertwiner import a, b``, the names)."""
    parts = dotted.split(".")
    if parts[0] != "intertwiner":
        return set()
    return set(names) if len(parts) == 1 else {parts[1]}


def _imported_units(tree: ast.AST, path: Path) -> set[str]:
    """Units of ours that a file imports: absolute and relative ``import``/``from`` statements and
    ``importlib.import_module("intertwiner....")`` / ``__import__`` calls with a literal name."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found |= _units_of(node.module or "", [a.name for a in node.names])
            else:  # relative: climb level - 1 packages from this file's package
                base = _module_of(path)[: len(_module_of(path)) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
                found |= _units_of(dotted, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                found |= _units_of(a.name, [])
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found |= _units_of(_absolute(arg.value, _package_arg(node)), [])
    return found


def _package_arg(call: ast.Call) -> str | None:
    """The literal ``package`` of ``import_module(name, package)`` (positional or keyword)."""
    args = [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "package")]
    arg = args[0] if args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _absolute(name: str, package: str | None) -> str:
    """``import_module``'s name made absolute: ``(".report", "intertwiner")`` ->
    ``"intertwiner.report"`` (a relative name without a literal package stays as it is)."""
    level = len(name) - len(name.lstrip("."))
    if not level or package is None:
        return name
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([name[level:]] if name[level:] else []))


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def test_the_import_scan_sees_relative_and_dynamic_imports():
    """The scan itself: a test of the tool, so that an import it cannot see is no silent pass."""
    src = (
        "from .. import groups\n"
        "from ..metrics import cka\n"
        "from . import _prep\n"
        "import importlib\n"
        "importlib.import_module('intertwiner.report.html')\n"
        "__import__('intertwiner.cli')\n"
    )
    found = _imported_units(ast.parse(src), ROOT / "metrics" / "x.py")
    assert found == {"groups", "metrics", "report", "cli"}


def test_the_import_scan_resolves_relative_import_module_names():
    """``import_module(".x", package)`` with literal names resolves as importlib does."""
    src = (
        "import importlib\n"
        "importlib.import_module('.stitching', 'intertwiner')\n"
        "importlib.import_module('..alignment', package='intertwiner.experiments')\n"
        "importlib.import_module('.x', package=name)\n"  # not literal: cannot be resolved
    )
    found = _imported_units(ast.parse(src), ROOT / "metrics" / "x.py")
    assert found == {"stitching", "alignment"}


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in ROOT.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_go_down_the_layers():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for target in _imported_units(ast.parse(path.read_text()), path) - {unit}:
            if target in LAYERS and LAYERS[target] >= LAYERS[unit]:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not upward, "imports that go up (or sideways):\n" + "\n".join(upward)
