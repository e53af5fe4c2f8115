"""Stitch layers: kinds, the activation-side group for 'auto', layouts, Sinkhorn and Hungarian."""

from __future__ import annotations

import itertools

import pytest
import torch

from intertwiner.errors import ShapeError
from intertwiner.groups import PAPER_ROWS, family, for_activation
from intertwiner.stitching import (
    BirkhoffStitch,
    MonomialStitch,
    UnknownLayerKindError,
    kind_for_activation,
    make_layer,
    parse_kind,
)
from intertwiner.stitching._layers import LassoStitch, hungarian, sinkhorn

KIND_FAMILY = {
    "full": "general_linear",
    "orthogonal": "orthogonal",
    "permutation": "permutation",
    "signed_perm": "signed_permutation",
    "perm_scale": "positive_monomial",
    "monomial": "monomial",
}


def test_parse_kind():
    assert parse_kind("full") == ("full", None)
    assert parse_kind(("low_rank", 4)) == ("low_rank", 4)
    assert parse_kind("low_rank:2") == ("low_rank", 2)
    assert parse_kind(("lasso", 1e-3)) == ("lasso", 1e-3)
    assert parse_kind("lasso:0.01") == ("lasso", 0.01)
    for bad in ("fancy", ("low_rank", 0), ("lasso", -1.0), ("rotation", 2), 3, "low_rank"):
        with pytest.raises(UnknownLayerKindError):
            parse_kind(bad)


@pytest.mark.parametrize("act", PAPER_ROWS)
def test_auto_kind_contains_phi_of_the_group(act):
    """The stitch sits after sigma, so 'auto' must hold phi(G_sigma): sampled phi(A) lie in it, and
    the kind is the smallest such family among the kinds (the next smaller one misses some)."""
    kind = kind_for_activation(act)
    g = for_activation(act)
    fam = family(KIND_FAMILY[kind])
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        m = g.phi(g.sample(6, generator=gen)).matrix()
        assert fam.contains(m), (act, kind)
    smaller = {"perm_scale": "permutation", "signed_perm": "permutation", "monomial": "perm_scale"}
    if kind in smaller:
        sub = family(KIND_FAMILY[smaller[kind]])
        mats = [g.phi(g.sample(6, generator=gen)).matrix() for _ in range(5)]
        assert not all(sub.contains(m) for m in mats)


def test_auto_examples():
    assert kind_for_activation("relu") == "perm_scale"
    assert kind_for_activation("tanh") == "signed_perm"
    assert kind_for_activation("gelu") == "permutation"
    assert kind_for_activation("identity") == "full"


LAYER_KINDS = [
    ("full", None),
    ("orthogonal", None),
    ("low_rank", 2),
    ("lasso", 1e-3),
    ("diagonal", None),
    ("permutation", None),
    ("perm_scale", None),
    ("signed_perm", None),
    ("monomial", None),
]


@pytest.mark.parametrize("kind,arg", LAYER_KINDS)
@pytest.mark.parametrize("shape,cdim", [((5, 6), 1), ((3, 6, 4, 2), 1), ((3, 7, 6), 2)])
def test_layer_is_its_matrix_along_the_channel_axis(kind, arg, shape, cdim):
    torch.manual_seed(0)
    layer = make_layer(kind, arg, 6, 6, cdim, bias=True, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layer.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    m, b = layer.matrix(), layer.bias_vector()
    expected = (x.movedim(cdim, -1) @ m.T + b).movedim(-1, cdim)
    torch.testing.assert_close(layer(x), expected)


def test_square_kinds_refuse_mismatched_widths():
    for kind in ("orthogonal", "diagonal", "perm_scale", "permutation", "signed_perm"):
        with pytest.raises(ShapeError):
            make_layer(kind, None, 6, 5)
    assert make_layer("full", None, 6, 5).matrix().shape == (5, 6)
    assert make_layer("low_rank", 2, 6, 5).matrix().shape == (5, 6)
    with pytest.raises(ShapeError):
        make_layer("low_rank", 7, 6, 6)


def test_monomial_layer_agrees_with_group_element():
    layer = MonomialStitch(5, 5, 1, kind="perm_scale", dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    scale = torch.tensor([0.5, 2.0, 1.5, 0.1, 3.0], dtype=torch.float64)
    layer.set_(perm, scale)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.element().apply(x, dim=1))
    with pytest.raises(ShapeError):
        layer.set_(torch.tensor([0, 0, 1, 2, 3]), scale)


def test_perm_scale_projection_keeps_scales_nonnegative():
    layer = MonomialStitch(4, 4, kind="perm_scale")
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([-1.0, 0.5, -0.2, 2.0]))
    layer.project_(1e-3)
    assert torch.equal(layer.scale.detach(), torch.tensor([0.0, 0.5, 0.0, 2.0]))
    # a fitted layer with zero scales is no group element: refused, naming the units
    from intertwiner.errors import InvalidElementError

    with pytest.raises(InvalidElementError, match=r"unit\(s\) \[0, 2\]"):
        layer.element()
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([0.1, 0.5, 0.3, 2.0]))
    e = layer.element()
    assert torch.isfinite(e.inverse().matrix()).all()


def test_orthogonal_layer_stays_orthogonal():
    layer = make_layer("orthogonal", None, 5, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    layer.set_(q)
    torch.testing.assert_close(layer.matrix(), q)
    m = layer.matrix()
    torch.testing.assert_close(m @ m.T, torch.eye(5, dtype=torch.float64))


def test_lasso_proximal_step_makes_exact_zeros():
    layer = LassoStitch(4, 4, lam=1.0, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.05, 0.0, 2.0]] * 4, dtype=torch.float64))
    layer.project_(lr=0.1)  # soft threshold at 0.1
    assert torch.equal(
        layer.weight[0].detach(), torch.tensor([0.4, 0.0, 0.0, 1.9], dtype=torch.float64)
    )
    assert layer.sparsity() == pytest.approx(0.5)


def test_sinkhorn_is_doubly_stochastic():
    w = torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = sinkhorn(w, 200)
    torch.testing.assert_close(s.sum(0), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(s.sum(1), torch.ones(6, dtype=torch.float64))
    z = w.clone()
    z[2] = 0
    assert torch.all(sinkhorn(z, 5)[2] == 0)  # zero rows are left alone, no NaN
    assert torch.isfinite(sinkhorn(z, 5)).all()


def test_hungarian_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        w = torch.rand(5, 5, generator=gen, dtype=torch.float64)
        best = max(
            itertools.permutations(range(5)), key=lambda p: sum(w[i, p[i]] for i in range(5))
        )
        assert hungarian(w).tolist() == list(best)


def test_birkhoff_evaluates_to_its_hard_rounding():
    layer = BirkhoffStitch(5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer.use_scale = True
    with torch.no_grad():
        layer.scale.copy_(torch.linspace(0.5, 2.0, 5, dtype=torch.float64))
    x = torch.randn(3, 5, dtype=torch.float64)
    layer.eval()
    hard = layer.to_monomial()
    torch.testing.assert_close(layer(x), hard(x))
    perm = layer.hard_perm()
    torch.testing.assert_close(hard(x), x[:, perm] * layer.scale[perm])  # S = P diag(s)
    layer.train()
    torch.testing.assert_close(layer(x), (x * layer.scale) @ layer.weight.T)
    assert layer.regularization() < 0
    with pytest.raises(UnknownLayerKindError):
        BirkhoffStitch(5, kind="signed_perm")


@pytest.mark.parametrize(
    "spelling, kind",
    [
        ("g_relu", "perm_scale"),
        ("positive_monomial", "perm_scale"),
        ("GL", "full"),
        ("general_linear", "full"),
        ("signed_permutation", "signed_perm"),
        ("Permutation", "permutation"),
    ],
)
def test_group_kinds_accept_every_name_of_their_family(spelling, kind):
    """Stitch kinds are names for group families: every alias of a family gives its kind."""
    assert parse_kind(spelling) == (kind, None)
    assert family(spelling) is family(kind)


def test_monomial_layer_keeps_its_scales_in_its_family():
    """After a step, ``project_`` moves the scales into the closure of the family's set."""
    for kind, want in (("perm_scale", [0.0, 2.0]), ("monomial", [-1.0, 2.0])):
        layer = MonomialStitch(2, 2, kind=kind)
        with torch.no_grad():
            layer.scale.copy_(torch.tensor([-1.0, 2.0]))
        layer.project_(lr=0.1)
        assert layer.scale.tolist() == want
    assert not isinstance(MonomialStitch(2, 2, kind="signed_perm").scale, torch.nn.Parameter)
