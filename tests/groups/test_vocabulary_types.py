"""Group words as types: the subgroup order on families and phi as objects, checked against
sampled elements and against the stored forms they replace."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups import (
    ABS_PHI,
    FAMILIES,
    IDENTITY_PHI,
    IntertwinerGroup,
    PowerPhi,
    as_phi,
    family,
    for_activation,
)

STORED = ["identity", "abs", ("power", 2), ("power", 3), ("power", 0.5)]


@pytest.mark.parametrize("a", sorted(FAMILIES))
@pytest.mark.parametrize("b", sorted(FAMILIES))
def test_subgroup_order_agrees_with_membership_of_samples(a, b):
    """``a <= b`` exactly when every sampled element of a lies in b."""
    fa, fb = family(a), family(b)
    g = torch.Generator().manual_seed(0)
    inside = all(fb.contains(fa.sample(4, generator=g), atol=1e-9) for _ in range(8))
    assert (fa <= fb) == inside
    assert (fa < fb) == (inside and fa is not fb)
    assert (fb >= fa) == inside


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_preserves_inner_products_means_orthogonal_samples(name):
    fam = family(name)
    g = torch.Generator().manual_seed(1)
    m = [fam.sample(5, generator=g).matrix() for _ in range(4)]
    orthogonal = all(torch.allclose(a.T @ a, torch.eye(5, dtype=a.dtype)) for a in m)
    assert fam.preserves_inner_products == orthogonal


@pytest.mark.parametrize("stored", STORED)
def test_phi_round_trips_through_its_stored_form_and_json(stored):
    phi = as_phi(stored)
    assert phi == stored and hash(phi) == hash(stored)  # old code and dict keys read the same
    assert as_phi(json.loads(json.dumps(phi.to_json()))) == phi
    assert as_phi(phi) is phi
    assert pickle.loads(pickle.dumps(phi)) == phi and copy.deepcopy(phi) == phi
    if not isinstance(phi, PowerPhi):
        assert pickle.loads(pickle.dumps(phi)) is phi  # singletons stay singletons


def test_phi_parsing_edges():
    assert as_phi(None) is IDENTITY_PHI and as_phi(("power", 1)) is IDENTITY_PHI
    assert as_phi("abs") is ABS_PHI and as_phi(["power", 2.0]) == PowerPhi(2)
    for bad in ("square", ("power", 0), ("pow", 2)):
        with pytest.raises(UnsupportedGroupError):
            as_phi(bad)


@pytest.mark.parametrize("stored", STORED[1:])
def test_forgets_signs_is_what_phi_does_to_negative_scales(stored):
    """``forgets_signs`` against phi applied to scales: a signed scale comes out positive."""
    phi = as_phi(stored)
    fam = family("positive_monomial" if stored == ("power", 0.5) else "monomial")
    g = torch.Generator().manual_seed(2)
    el = fam.sample(6, generator=g)
    out = phi.apply(el)
    assert torch.allclose(out.matrix(), IntertwinerGroup(fam, stored).phi(el).matrix())
    if fam.flips_signs:
        el.scale[0] = -abs(float(el.scale[0]))
        assert bool((phi.apply(el).scale > 0).all()) == phi.forgets_signs


def test_activation_groups_carry_phi_objects():
    assert for_activation("relu").phi_kind is IDENTITY_PHI
    assert for_activation(torch.nn.LeakyReLU(-1.0)).phi_kind.forgets_signs
    assert not for_activation("tanh").phi_kind.forgets_signs
