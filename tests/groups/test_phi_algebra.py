"""The phi algebra the tracer relies on: fixed points of phi and preimages of families under phi,
checked on sampled elements (and shown maximal: the next larger family leaves them)."""

from __future__ import annotations

import pytest
import torch

from intertwiner.groups import (
    LARGER,
    IntertwinerGroup,
    family,
    fixed_point_family,
    phi_preimage,
)

PHIS = ["identity", "abs", ("power", 2), ("power", 3)]
TARGETS = ["permutation", "signed_permutation", "positive_monomial", "monomial", "orthogonal"]


def _phi(phi, element):
    monomial = "positive_monomial" if phi != "identity" else "general_linear"
    return IntertwinerGroup(family(monomial if phi == "identity" else "monomial"), phi).phi(element)


def _sample(fam: str, n: int, gen: torch.Generator):
    return family(fam).sample(n, generator=gen)


@pytest.mark.parametrize("phi", PHIS)
def test_fixed_point_family_is_fixed_and_maximal(phi):
    gen = torch.Generator().manual_seed(0)
    fam = fixed_point_family(phi)
    for _ in range(5):
        a = _sample(fam, 5, gen)
        if phi != "identity":
            torch.testing.assert_close(_phi(phi, a).matrix(), a.matrix())
    if phi != "identity":
        larger = [f for f in LARGER[fam] if family(f).monomial]
        for f in larger:
            a = _sample(f, 5, gen)
            while family(fam).contains(a):
                a = _sample(f, 5, gen)
            assert not torch.allclose(_phi(phi, a).matrix(), a.matrix())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("phi", PHIS[1:])
def test_phi_preimage_lands_in_target_and_is_maximal(phi, target):
    gen = torch.Generator().manual_seed(1)
    fam = phi_preimage(phi, target)
    for _ in range(5):
        assert family(target).contains(_phi(phi, _sample(fam, 5, gen)))
    for f in LARGER[fam]:
        if not family(f).monomial:
            continue  # phi is defined on monomial matrices only
        a = _sample(f, 5, gen)
        while family(fam).contains(a):
            a = _sample(f, 5, gen)
        assert not family(target).contains(_phi(phi, a))
