"""Group words are types (issue 28): no code outside ``groups/`` compares or switches on a family
name or a phi name. Families and phi travel as objects (``groups.family(name)``,
``groups.as_phi(spec)`` convert names once, at the edges) and callers ask them what they need
(``fam.preserves_inner_products``, ``fam <= other``, ``phi.forgets_signs``).

The scan parses every module under ``src/intertwiner`` outside ``groups/`` and flags:

- a comparison (``==``, ``!=``, ``in``, ``not in``) with a vocabulary literal on either side (also
  inside a tuple/list/set literal: ``kind in ("perm_scale", "full")``);
- ``.startswith(...)`` / ``.endswith(...)`` / ``.removeprefix(...)`` with a vocabulary literal;
- ``match``/``case`` on a vocabulary literal (also ``case ("power", d)``);
- dict dispatch: a dict literal keyed by a vocabulary literal that is looked up by a computed key
  (``{"abs": f, "identity": g}[kind]``, ``TABLE.get(kind)`` on a module-level table).

Names that only *sit* somewhere (CLI option choices, preset tables, typer defaults, default
arguments, docstrings, labels passed to a function, ``d["orthogonal"]`` record fields) are not
comparisons and are not flagged.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import intertwiner
from intertwiner.groups import ALIASES, PHI_NAMES

ROOT = Path(intertwiner.__file__).parent

# Every spelling of a family (names and aliases, lower case) and of a phi kind. The one-letter
# alias "o" is left out: a single letter is no word, and flagging it would flag any variable "o".
FAMILY_WORDS = frozenset(ALIASES) - {"o"}
# "identity", "abs" and "power" are also ordinary words of other vocabularies (the run folder's
# identity record, a stitch layer's identity init, the identity basis of dissection, the rotation
# power p): a phi word is flagged where the other side is about phi (an expression naming ``phi``)
# or in the tuple form ``("power", d)``; a family word is flagged everywhere.
PHI_WORDS = frozenset(PHI_NAMES)
VOCABULARY = FAMILY_WORDS | PHI_WORDS

SKIP = {
    ROOT / "groups",  # the owner of the vocabulary: names become objects here
}

# (file relative to src/intertwiner, word): edges the scan cannot tell from a switch. Keep this
# tiny; each entry says why it is an edge.
ALLOWED: set[tuple[str, str]] = {
    # GROUPS renames the preset's row labels ("G_ReLU", "orthogonal", ...) to transform-kind names
    # once per job, at the edge where stored rows meet the experiment; sanity.resolve_kind turns
    # the kind into a Family. It is a table of names, not a switch (i28schema types the presets).
    ("experiments/sanity_job.py", "g_relu"),
}


def _word(node: ast.AST) -> str | None:
    """The vocabulary word a literal node spells (case-insensitive), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        w = node.value.strip().lower()
        return w if w in VOCABULARY else None
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for elt in node.elts:
            w = _word(elt)
            if w is not None:
                return w
    return None


def _about_phi(node: ast.AST | None) -> bool:
    """An expression that names phi (``phi``, ``group.phi_kind``, ``s.phi``)."""
    if node is None:
        return False
    return any(
        "phi" in (n.id if isinstance(n, ast.Name) else n.attr).lower()
        for n in ast.walk(node)
        if isinstance(n, (ast.Name, ast.Attribute))
    )


def _power_tuple(node: ast.AST) -> bool:
    """The old tuple form of a power phi: ``("power", d)``."""
    return (
        isinstance(node, (ast.Tuple, ast.List))
        and len(node.elts) == 2
        and isinstance(node.elts[0], ast.Constant)
        and node.elts[0].value == "power"
    )


def _flag(word: str | None, literal: ast.AST, other: list[ast.AST | None]) -> bool:
    """Whether ``word`` (spelt by ``literal``) compared with ``other`` is a group word."""
    if word is None:
        return False
    if word in FAMILY_WORDS:
        return True
    return _power_tuple(literal) or any(_about_phi(o) for o in other)


def _pattern_word(p: ast.pattern) -> str | None:
    if isinstance(p, ast.MatchValue):
        return _word(p.value)
    if isinstance(p, ast.MatchSequence):
        return next((w for q in p.patterns if (w := _pattern_word(q))), None)
    if isinstance(p, ast.MatchOr):
        return next((w for q in p.patterns if (w := _pattern_word(q))), None)
    if isinstance(p, ast.MatchAs) and p.pattern is not None:
        return _pattern_word(p.pattern)
    return None


def _dict_word(node: ast.AST) -> str | None:
    """For a dict literal keyed by vocabulary words only (a table of groups, not of presets that
    happen to include one named "full"): a family key if it has one, else its first key."""
    if isinstance(node, ast.Dict) and node.keys:
        words = [_word(k) if k is not None else None for k in node.keys]
        if all(words):
            return next((w for w in words if w in FAMILY_WORDS), words[0])
    return None


def scan(source: str) -> list[tuple[int, str, str]]:
    """``[(line, word, what), ...]``: every comparison or switch on a vocabulary literal."""
    tree = ast.parse(source)
    # Module-level tables keyed by vocabulary words: ``NAME = {"abs": ..., ...}``.
    tables: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and (w := _dict_word(node.value)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            tables.update({t.id: w for t in targets if isinstance(t, ast.Name)})

    def table_word(value: ast.AST) -> str | None:
        if isinstance(value, ast.Name):
            return tables.get(value.id)
        return _dict_word(value)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, operand in enumerate(operands):
                if _flag(w := _word(operand), operand, operands[:i] + operands[i + 1 :]):
                    found.append((node.lineno, w, "comparison"))
        elif isinstance(node, ast.Match):
            for case in node.cases:
                w = _pattern_word(case.pattern)
                if w is not None and (
                    w in FAMILY_WORDS
                    or _about_phi(node.subject)
                    or (isinstance(case.pattern, ast.MatchSequence) and w == "power")
                ):
                    found.append((case.pattern.lineno, w, "match/case"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, receiver = node.func.attr, node.func.value
            if attr in ("startswith", "endswith", "removeprefix", "removesuffix"):
                for arg in node.args:
                    if _flag(w := _word(arg), arg, [receiver]):
                        found.append((node.lineno, w, attr))
            elif attr == "get" and node.args and not isinstance(node.args[0], ast.Constant):
                if _flag(w := table_word(receiver), receiver, [node.args[0]]):
                    found.append((node.lineno, w, "dict dispatch (.get)"))
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
            if isinstance(node.ctx, ast.Load):
                if _flag(w := table_word(node.value), node.value, [node.slice]):
                    found.append((node.lineno, w, "dict dispatch ([])"))
    return sorted(found)


def _modules() -> list[Path]:
    return [
        p for p in sorted(ROOT.rglob("*.py")) if not any(p.is_relative_to(skip) for skip in SKIP)
    ]


def test_no_group_word_is_compared_outside_groups():
    bad = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        for line, word, what in scan(path.read_text()):
            if (rel, word) not in ALLOWED:
                bad.append(f"{rel}:{line}: {what} on {word!r}")
    assert not bad, (
        "family/phi names compared outside groups/: pass the objects (groups.family(name), "
        "groups.as_phi(spec)) and ask them (fam <= other, fam.preserves_inner_products, "
        "phi.forgets_signs):\n" + "\n".join(bad)
    )


@pytest.mark.parametrize(
    "source, word",
    [
        ('if fam.name == "orthogonal": pass', "orthogonal"),
        ('ok = "perm_scale" != kind', "perm_scale"),
        ('ok = kind in ("perm_scale", "full")', "perm_scale"),
        ('ok = kind not in ["Signed_Perm"]', "signed_perm"),
        ('ok = name.startswith("orthogonal")', "orthogonal"),
        ('ok = phi == "abs"', "abs"),
        ('ok = group.phi_kind[0] == "power"', "power"),
        ('ok = kind in (None, "identity") and kind == ("power", 3)', "power"),
        ('ok = s.phi in (None, "identity")', "identity"),
        ('ok = phi == ("power", 2)', "power"),
        ("match phi:\n    case 'identity':\n        pass", "identity"),
        ("match phi:\n    case ('power', d):\n        pass", "power"),
        ("match k:\n    case 'x' | 'gl':\n        pass", "gl"),
        ('f = {"abs": 1, "identity": 2}[phi]', "abs"),
        ('f = {"identity": 1, "orthogonal": 2}.get(kind)', "orthogonal"),
        ("match group.phi_kind:\n    case 'abs':\n        pass", "abs"),
        ('T = {"monomial": 1}\ndef f(k):\n    return T.get(k)', "monomial"),
        ('T = {"monomial": 1}\ndef f(k):\n    return T[k]', "monomial"),
    ],
)
def test_the_scan_flags_a_planted_literal(source, word):
    """The scanner itself, on small sources: each planted comparison or switch is found."""
    assert [w for _, w, _ in scan(source)] == [word]


@pytest.mark.parametrize(
    "source",
    [
        '"""Compare with ``fam.name == "orthogonal"`` in a docstring."""',
        'def f(group="orthogonal"): pass',
        'OPTION = typer.Option("full", help="orthogonal or full")',
        'PRESETS = {"quick": 1, "full": 2}\ndef f(name):\n    return PRESETS[name]',
        'row = {"identity": 1}\nn = row["identity"]',
        'g = family("positive_monomial")',
        "ok = fam <= ORTHOGONAL and phi.forgets_signs",
        'ok = kind == "lasso"',
        'ok = mode == "o"',
        'ok = cfg.init in ("identity", "random")',
        'ok = basis_kind == "power"',
        'ok = "identity" in meta',
    ],
)
def test_the_scan_leaves_edges_alone(source):
    """Names that only sit at an edge (defaults, option choices, tables read by constant keys,
    conversion calls) are no comparison."""
    assert scan(source) == []
