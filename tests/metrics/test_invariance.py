"""Invariance under sampled elements of each metric's declared groups, and non-invariance under the
next larger group, in float32 and float64, for dense, conv and token layouts."""

import pytest
import torch

from intertwiner.groups import for_activation
from intertwiner.metrics import (
    cka,
    group_cka,
    metric,
    procrustes_distance,
    procrustes_similarity,
)
from intertwiner.testing import assert_invariant, assert_not_invariant

SPECS = [
    "cka",
    "cka_debiased",
    "rbf_cka",
    "procrustes_distance:orthogonal",
    "procrustes_distance:permutation",
    "procrustes_distance:signed_permutation",
    "procrustes_distance:positive_monomial",
    "procrustes_distance:monomial",
    "procrustes_similarity:orthogonal",
    "procrustes_similarity:positive_monomial",
    "group_cka",
    "group_cka:permutation",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", SPECS)
def test_invariant_to_every_declared_family(spec, dtype, layout_pair):
    _, x, y = layout_pair
    m = metric(spec)
    assert m.invariant_to, "every metric declares its invariances"
    for fam in m.invariant_to:
        assert_invariant(m, fam, x, y, dtype=dtype, n_samples=2, generator=1)
        assert_invariant(m, fam, x, dtype=dtype, n_samples=1, generator=2)


# For each metric: a family just outside its declared invariances that must change it.
NOT_INVARIANT = {
    "cka": ["general_linear", "positive_monomial"],
    "cka_debiased": ["general_linear", "positive_monomial"],
    "procrustes_distance:orthogonal": ["positive_monomial", "general_linear"],
    "procrustes_distance:permutation": ["signed_permutation", "positive_monomial"],
    "procrustes_distance:signed_permutation": ["monomial", "orthogonal"],
    "procrustes_distance:positive_monomial": ["monomial", "orthogonal"],
    "procrustes_distance:monomial": ["orthogonal", "general_linear"],
    "procrustes_similarity:orthogonal": ["positive_monomial"],
    "procrustes_similarity:positive_monomial": ["orthogonal"],
    "group_cka": ["orthogonal", "general_linear"],
    "group_cka:permutation": ["positive_monomial"],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", sorted(NOT_INVARIANT))
def test_changes_under_a_larger_group(spec, dtype, layout_pair):
    _, x, y = layout_pair
    m = metric(spec)
    for fam in NOT_INVARIANT[spec]:
        assert fam not in m.invariant_to
        assert_not_invariant(m, fam, x, y, dtype=dtype, n_samples=3, generator=3)


def test_function_attributes_declare_default_invariances():
    assert "orthogonal" in cka.invariant_to
    assert procrustes_distance.invariant_to == metric("procrustes_distance").invariant_to
    assert procrustes_similarity.invariant_to == metric("procrustes_similarity").invariant_to
    assert "positive_monomial" in group_cka.invariant_to
    assert "orthogonal" not in group_cka.invariant_to


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "power2", "abs", "rbf"])
def test_intertwiner_group_acts_through_phi(activation):
    """Representations sigma(z) change by phi(A); the metric for G_sigma is invariant to that."""
    g = for_activation(activation)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    act = {"power2": lambda t: t**2, "abs": torch.abs, "rbf": lambda t: torch.exp(-(t**2))}
    fn = act.get(activation, getattr(torch, activation, None) or torch.nn.functional.gelu)
    h1 = fn(z)
    h2 = fn(z @ torch.randn(5, 5, generator=gen, dtype=torch.float64))
    assert_invariant(lambda a, b: procrustes_distance(a, b, group=g), g, h1, h2, generator=4)


def test_procrustes_of_identity_group_is_a_clear_error():
    from intertwiner.errors import UnsupportedGroupError

    x = torch.randn(10, 3)
    with pytest.raises(UnsupportedGroupError, match="cka"):
        procrustes_distance(x, x, group=for_activation("identity"))
    with pytest.raises(UnsupportedGroupError, match="cka"):
        group_cka(x, x, group="orthogonal")
