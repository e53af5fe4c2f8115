"""discover() against the table, determinism, and functions that must not fool it."""

import pytest
import torch

from intertwiner.errors import NotElementwiseError, SingularActivationError, UnsupportedGroupError
from intertwiner.groups import TABLE_ROWS, activation_module, discover, for_activation


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_discover_agrees_with_the_table(name):
    found = discover(activation_module(name), name=name)
    assert found.same_as(for_activation(name))
    assert found.evidence.verify_error < 1e-9


def test_discover_is_deterministic():
    a = discover(torch.nn.GELU()).evidence.to_dict()
    b = discover(torch.nn.GELU()).evidence.to_dict()
    assert a == b


def test_evidence_lists_the_scalings_tested():
    ev = discover(torch.relu).evidence
    by_a = {t.a: t for t in ev.scalings}
    assert by_a[2.0].admitted and by_a[2.0].b == pytest.approx(2.0)
    assert not by_a[-1.0].admitted
    assert ev.family == "positive_monomial"


@pytest.mark.parametrize(
    "fn,family",
    [
        # Homogeneous only near zero: relu clipped far out.
        (lambda x: torch.clamp(x, 0.0, 100.0), "permutation"),
        # Homogeneous only far from zero: softplus ~ relu for large |x|.
        (lambda x: torch.nn.functional.softplus(x, beta=50.0), "permutation"),
        # Odd, but homogeneous only on |x| < 5.
        (
            lambda x: torch.where(x.abs() < 5, x, 5 * torch.sign(x) + (x - 5 * torch.sign(x)) / 2),
            "signed_permutation",
        ),
        # Identity except a tiny wiggle past 500.
        (lambda x: torch.where(x > 500, x + 1e-3, x), "permutation"),
        (torch.sin, "signed_permutation"),
        (torch.exp, "permutation"),
        (lambda x: torch.relu(x) ** 2, "positive_monomial"),
    ],
)
def test_not_fooled_by_partial_homogeneity(fn, family):
    assert discover(fn).family.name == family


def test_power_phi_for_positive_homogeneous_degree_two():
    g = discover(lambda x: torch.relu(x) ** 2)
    assert g.phi_kind == ("power", 2)


def test_rejects_non_elementwise_functions():
    with pytest.raises(NotElementwiseError):
        discover(lambda x: torch.softmax(x, dim=-1))
    with pytest.raises(NotElementwiseError):
        discover(lambda x: x.cumsum(-1))
    with pytest.raises(NotElementwiseError):
        discover(lambda x: x.sum(-1))


def test_rejects_singular_sigma_identity():
    with pytest.raises(SingularActivationError):
        discover(torch.zeros_like)
    with pytest.raises(SingularActivationError):
        discover(lambda x: torch.ones_like(x))


def test_rejects_symmetries_outside_the_supported_families():
    with pytest.raises(UnsupportedGroupError, match="affine"):
        discover(lambda x: 2 * x + 1)
    with pytest.raises(UnsupportedGroupError):
        discover(lambda x: x.abs() ** 1.5)
