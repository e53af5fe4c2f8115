"""Action kinds and modes as types: the writer of a tensor moves its output axis like the tensor,
a reader its input axis by the inverse transpose; members equal their JSON strings."""

from __future__ import annotations

import json

import pytest

from intertwiner.groups import ActionKind, Mode


@pytest.mark.parametrize(
    ("mode", "out", "inp"),
    [("A", "A", "A^-T"), ("P", "P", "P"), ("phi", "phi(A)", "phi(A)^-T")],
)
def test_writing_and_reading_kinds(mode, out, inp):
    assert ActionKind.writing(mode) == out and ActionKind.reading(Mode(mode)) == inp
    assert ActionKind.reading(mode).inverse == (inp != "P")
    assert not ActionKind.writing(mode).inverse


def test_kinds_are_their_strings():
    assert json.loads(json.dumps({"kind": ActionKind.A_INV_T})) == {"kind": "A^-T"}
    assert ActionKind("phi(A)") is ActionKind.PHI
    with pytest.raises(ValueError):
        Mode("B")


def test_linear_groups_are_those_of_scalar_multiples():
    from intertwiner.groups import discover, for_activation

    assert for_activation("identity").linear
    assert discover(lambda z: 3.0 * z).linear
    assert not for_activation("relu").linear and not for_activation("tanh").linear


def test_scalar_kinds_take_powers_of_the_common_factor():
    """``c(A)``, ``c(phi(A))``, ``c(A)/c(phi(A))`` on a ``c P`` element with phi = x^2: c, c^2,
    1/c; ``scalar_added`` maps the modes; a dense element has no common factor."""
    import torch

    from intertwiner.errors import UnsupportedGroupError
    from intertwiner.groups import SCALED_PERMUTATION, IntertwinerGroup

    assert ActionKind.scalar_added("A") is ActionKind.SCALAR_A
    assert ActionKind.scalar_added("phi") is ActionKind.SCALAR_PHI
    assert ActionKind.scalar_added("P") is None
    assert ActionKind.SCALAR_A_OVER_PHI.scalar and not ActionKind.A.scalar
    group = IntertwinerGroup(SCALED_PERMUTATION, ("power", 2))
    g = SCALED_PERMUTATION.sample(5, generator=torch.Generator().manual_seed(0))
    c = float(g.scale[0])
    assert group.scalar_factor("c(A)", g) == pytest.approx(c)
    assert group.scalar_factor("c(phi(A))", g) == pytest.approx(c**2)
    assert group.scalar_factor("c(A)/c(phi(A))", g) == pytest.approx(1 / c)
    with pytest.raises(UnsupportedGroupError):
        group.scalar_factor("A", g)
    gl = IntertwinerGroup("general_linear", "identity")
    with pytest.raises(UnsupportedGroupError, match="monomial element"):
        gl.scalar_factor("c(A)", gl.sample(3))
