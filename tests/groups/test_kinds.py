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
