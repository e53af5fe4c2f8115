"""Alignment's choice of how much of each site's group to search is an ``Extent``, not a family
name: the old strings convert once at the edge, members and strings give the same alignment, and
no family name is compared or switched on anywhere in alignment/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from tests._support.factories import build_zoo

import intertwiner.alignment as alignment_pkg
from intertwiner.alignment import GROUPS, Extent, align
from intertwiner.errors import InvalidOptionError
from intertwiner.groups import ALIASES, FAMILIES
from intertwiner.symmetry import apply, random_elements, trace

#: Not a group: ``zip_models(match="permutation")`` names zip's one-to-one matching method.
ALLOWED = {("_zip.py", "match", "permutation")}


def test_parse_accepts_the_edge_names_and_members_only():
    assert GROUPS == ("full", "permutation", "none")
    for name, member in zip(GROUPS, (Extent.SITE_GROUP, Extent.PERMUTATION, Extent.IDENTITY),
                            strict=True):  # fmt: skip
        assert Extent.parse(name) is member and Extent.parse(member) is member
        assert str(member) == name
    for bad in ("discrete", Extent.DISCRETE, "orthogonal", "general_linear", "gl", None):
        with pytest.raises(InvalidOptionError, match="group must be one of"):
            Extent.parse(bad)


@pytest.mark.parametrize("member", [Extent.SITE_GROUP, Extent.PERMUTATION, Extent.IDENTITY])
def test_member_and_string_give_the_same_alignment(member):
    a, x = build_zoo("myrtle_cnn", "relu", seed=0)
    spec = trace(a, x)
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(1)))
    by_member = align(a, b, example_input=x, group=member)
    by_name = align(a, b, example_input=x, group=member.value)
    assert by_member.group == by_name.group == member.value  # results keep the edge name
    assert by_member.history == by_name.history
    for k, e in by_name.elements.items():
        assert torch.equal(by_member.elements[k].matrix(), e.matrix())


def _string_comparisons(tree: ast.AST) -> list[tuple[str, str]]:
    """(other side, string) for every ``==``/``!=``/``in`` comparison with a string literal and
    every ``match`` case on one."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            strings = [s.value for s in sides if isinstance(s, ast.Constant)
                       and isinstance(s.value, str)]  # fmt: skip
            for s in sides:
                if isinstance(s, (ast.Tuple, ast.List, ast.Set)):
                    strings += [e.value for e in s.elts if isinstance(e, ast.Constant)]
            other = next((ast.unparse(s) for s in sides if not isinstance(s, ast.Constant)), "")
            found += [(other, v) for v in strings if isinstance(v, str)]
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant):
            found.append(("match", str(node.value.value)))
    return found


def test_no_family_name_is_compared_in_alignment():
    names = set(FAMILIES) | set(ALIASES) | {f.name for f in FAMILIES.values()}
    bad = []
    for path in sorted(Path(alignment_pkg.__file__).parent.glob("*.py")):
        for other, value in _string_comparisons(ast.parse(path.read_text())):
            if value in names and (path.name, other, value) not in ALLOWED:
                bad.append(f"{path.name}: {other} vs {value!r}")
    assert not bad, bad


def test_the_scan_sees_a_family_comparison():
    tree = ast.parse('if fam.name == "positive_monomial" or g in ("orthogonal", "x"): pass')
    assert ("fam.name", "positive_monomial") in _string_comparisons(tree)
    assert ("g", "orthogonal") in _string_comparisons(tree)
