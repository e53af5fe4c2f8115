"""The public invariance helpers detect invariance and its absence."""

import pytest
import torch

from intertwiner.groups import for_activation
from intertwiner.testing import (
    apply_to_neurons,
    assert_invariant,
    assert_not_invariant,
    sample_neuron_element,
)


def col_norm_sum(x, y):
    """Invariant to permutations (and signs), not to scalings."""
    return float(x.double().norm(dim=0).sum() + y.double().norm(dim=0).sum())


def test_assert_invariant_passes_and_fails():
    x = torch.randn(10, 4, dtype=torch.float64)
    assert_invariant(col_norm_sum, "signed_permutation", x, x + 1)
    with pytest.raises(AssertionError, match="not invariant to positive_monomial"):
        assert_invariant(col_norm_sum, "positive_monomial", x, x + 1)
    assert_not_invariant(col_norm_sum, "positive_monomial", x, x + 1)
    with pytest.raises(AssertionError, match="looks invariant"):
        assert_not_invariant(col_norm_sum, "permutation", x, x + 1)


def test_string_specs_layouts_and_dtypes():
    x = torch.randn(6, 3, 2, 2).relu()
    for dtype in (torch.float32, torch.float64):
        assert_invariant(
            "procrustes_distance:positive_monomial",
            "positive_monomial",
            x,
            dtype=dtype,
            generator=0,
        )
    tok = torch.randn(4, 5, 3)
    e = sample_neuron_element("permutation", 3, torch.Generator().manual_seed(0))
    assert torch.equal(apply_to_neurons(tok, e), tok[..., e.perm])


def test_intertwiner_groups_act_through_phi():
    g = for_activation("power2")  # monomial with phi(A) = A^2 entrywise: positive scales
    e = sample_neuron_element(g, 6, torch.Generator().manual_seed(0))
    assert bool((e.scale > 0).all())


def test_same_seed_same_samples():
    a = sample_neuron_element("orthogonal", 4, torch.Generator().manual_seed(3)).matrix()
    b = sample_neuron_element("orthogonal", 4, torch.Generator().manual_seed(3)).matrix()
    assert torch.equal(a, b)
