"""The activation table: the intertwining identity, phi as a homomorphism, and lookups."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from intertwiner.errors import NotElementwiseError, UnknownActivationError
from intertwiner.groups import (
    LARGER,
    PAPER_ROWS,
    TABLE_ROWS,
    IntertwinerGroup,
    Power,
    activation_module,
    activation_name,
    for_activation,
    intersect,
    is_subgroup,
    verify,
)

# The paper's Table 1 (paper.md section 2): family and phi of each row.
PAPER_TABLE = {
    "identity": ("general_linear", "identity"),
    "relu": ("positive_monomial", "identity"),
    "leaky_relu": ("positive_monomial", "identity"),
    "gelu": ("permutation", "identity"),
    "sigmoid": ("permutation", "identity"),
    "tanh": ("signed_permutation", "identity"),
    "rbf": ("signed_permutation", "abs"),
    "power2": ("monomial", ("power", 2)),
    "power3": ("monomial", ("power", 3)),
}


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_table(name):
    g = for_activation(name)
    assert (g.family.name, g.phi_kind) == PAPER_TABLE[name]


@pytest.mark.parametrize("name", TABLE_ROWS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_intertwining_identity(name, dtype, tol):
    g = for_activation(name)
    assert verify(g, activation_module(name), dtype=dtype, relative=True) < tol


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_next_larger_family_breaks_the_identity(name):
    g = for_activation(name)
    for bigger in LARGER[g.family.name]:
        try:
            h = IntertwinerGroup(bigger, g.phi_kind)
        except ValueError:
            h = IntertwinerGroup(bigger, "identity")
        assert verify(h, activation_module(name), relative=True) > 1e-3


def test_relu_fails_for_a_generic_orthogonal_matrix():
    assert verify(IntertwinerGroup("orthogonal"), nn.ReLU()) > 0.1


@pytest.mark.parametrize("name", TABLE_ROWS)
@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=10, deadline=None)
def test_phi_is_a_homomorphism(name, seed):
    g = for_activation(name)
    gen = torch.Generator().manual_seed(seed)
    a, b = g.sample(5, generator=gen), g.sample(5, generator=gen)
    torch.testing.assert_close(g.phi(a @ b).matrix(), (g.phi(a) @ g.phi(b)).matrix())
    torch.testing.assert_close(g.phi(a.inverse()).matrix(), g.phi(a).inverse().matrix())


def test_phi_equals_sigma_A_sigma_I_inverse():
    # The paper's lemma: phi(A) = sigma(A) sigma(I)^-1.
    gen = torch.Generator().manual_seed(0)
    for name in PAPER_ROWS[1:]:
        g, sigma = for_activation(name), activation_module(name).double()
        a = g.sample(5, generator=gen)
        expected = sigma(a.matrix()) @ torch.linalg.inv(sigma(torch.eye(5, dtype=torch.float64)))
        torch.testing.assert_close(g.phi(a).matrix(), expected)


def test_accepts_instances_classes_functionals_and_names():
    relu = for_activation("relu")
    for form in (nn.ReLU(), nn.ReLU, torch.relu, F.relu, "ReLU", "relu"):
        assert for_activation(form) == relu
    assert for_activation(F.gelu) == for_activation(nn.GELU())
    assert for_activation(Power(3)) == for_activation("power3")
    assert activation_name(nn.GELU()) == "gelu"
    assert activation_name("power3") == "power3"


def test_parameters_matter():
    assert for_activation(nn.LeakyReLU(1.0)).family.name == "general_linear"
    assert for_activation(nn.LeakyReLU(-1.0)).phi_kind == "abs"
    assert for_activation(nn.Hardtanh(0.0, 1.0)).family.name == "permutation"
    assert for_activation(nn.ELU(alpha=0.0)).family.name == "positive_monomial"
    assert for_activation(nn.Softshrink(0.0)).family.name == "general_linear"


def test_unknown_and_invalid_activations():
    with pytest.raises(UnknownActivationError, match="discover"):
        for_activation("swishy")
    with pytest.raises(UnknownActivationError, match="discover"):
        for_activation(torch.sin)
    with pytest.raises(NotElementwiseError):
        for_activation(nn.Softmax(dim=-1))
    with pytest.raises(UnknownActivationError, match="one parameter"):
        for_activation(nn.PReLU(num_parameters=4))


def test_family_lattice():
    assert intersect("positive_monomial", "signed_permutation").name == "permutation"
    assert intersect("orthogonal", "monomial").name == "signed_permutation"
    assert intersect("general_linear", "positive_monomial").name == "positive_monomial"
    assert is_subgroup("permutation", "orthogonal")
    assert not is_subgroup("positive_monomial", "orthogonal")
