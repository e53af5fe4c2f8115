"""groups.fit_element: the best element of a family from second-moment statistics."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import minimize_scalar

from intertwiner.groups import FitTerm, fit_element, pair_costs


def _terms(kinds, n=3, m=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in kinds:
        x = torch.randn(n, m, generator=gen, dtype=torch.float64)
        y = torch.randn(n, m, generator=gen, dtype=torch.float64)
        out.append((k, x, y, FitTerm(k, x @ y.T, (y * y).sum(1), (x * x).sum(1))))
    return out


def _factor(kind, s):
    return {"A": s, "P": 1.0, "A^-T": 1.0 / s, "phi(A)": s, "phi(A)^-T": 1.0 / s}[kind]


def _brute(raw, signs):
    """min over permutations and per-unit scales (scipy on log-scale, both signs if asked)."""
    n = raw[0][1].shape[0]
    best = float("inf")
    for perm in itertools.permutations(range(n)):
        total = 0.0
        for i, j in enumerate(perm):

            def cost(s, i=i, j=j):
                return sum(float(((x[i] - _factor(k, s) * y[j]) ** 2).sum()) for k, x, y, _ in raw)

            opts = []
            for sg in signs:
                r = minimize_scalar(
                    lambda u, sg=sg: cost(sg * float(torch.exp(torch.tensor(u)))),
                    bounds=(-9, 9),
                    method="bounded",
                    options={"xatol": 1e-12},
                )
                opts.append(r.fun)
            total += min(opts)
        best = min(best, total)
    return best


@pytest.mark.parametrize("fam,signs", [("positive_monomial", (1.0,)), ("monomial", (1.0, -1.0))])
def test_monomial_fit_matches_brute_force(fam, signs):
    raw = _terms(["A", "P", "A^-T", "phi(A)^-T"])
    _, val = fit_element(fam, "identity", [t for *_, t in raw])
    assert val == pytest.approx(_brute(raw, signs), rel=1e-6)


def test_signed_and_plain_permutation_fit_matches_brute_force():
    raw = _terms(["A", "P", "A^-T"])
    terms = [t for *_, t in raw]
    n = 3
    for fam, signs in (("permutation", (1.0,)), ("signed_permutation", (1.0, -1.0))):
        best = min(
            sum(
                min(
                    sum(float(((x[i] - _factor(k, s) * y[j]) ** 2).sum()) for k, x, y, _ in raw)
                    for s in signs
                )
                for i, j in enumerate(perm)
            )
            for perm in itertools.permutations(range(n))
        )
        _, val = fit_element(fam, "identity", terms)
        assert val == pytest.approx(best, rel=1e-12)


def test_relu_scale_balances_incoming_and_outgoing():
    """One unit: x_in = 2 y_in and x_out = y_out / 2 -> s = 2 exactly."""
    y_in, y_out = torch.tensor([[1.0, 2.0]]).double(), torch.tensor([[3.0, -1.0]]).double()
    x_in, x_out = 2 * y_in, y_out / 2
    terms = [
        FitTerm("A", x_in @ y_in.T, (y_in**2).sum(1), (x_in**2).sum(1)),
        FitTerm("phi(A)^-T", x_out @ y_out.T, (y_out**2).sum(1), (x_out**2).sum(1)),
    ]
    g, val = fit_element("positive_monomial", "identity", terms)
    assert float(g.scale[0]) == pytest.approx(2.0, rel=1e-12)
    assert val == pytest.approx(0.0, abs=1e-20)


def test_norm_scale_matches_energy():
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).double()
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).double()
    t = FitTerm("phi(A)", x @ y.T, (y * y).sum(1), (x * x).sum(1))
    g, _ = fit_element("positive_monomial", "identity", [t], scale="norm")
    assert g.perm.tolist() == [1, 0]
    assert torch.allclose(g.scale, torch.tensor([3.0, 1.0]).double())
    _, scales = pair_costs("positive_monomial", "identity", [t], scale="norm")
    assert torch.allclose(scales, torch.tensor([[3.0, 3.0], [1.0, 1.0]]).double())


@pytest.mark.parametrize("fam", ["orthogonal", "general_linear"])
def test_dense_fit_recovers_exact_map(fam):
    gen = torch.Generator().manual_seed(0)
    n, m = 4, 9
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    mat = q if fam == "orthogonal" else q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0]).double())
    y1 = torch.randn(n, m, generator=gen, dtype=torch.float64)
    y2 = torch.randn(n, m, generator=gen, dtype=torch.float64)
    x1, x2 = mat @ y1, torch.linalg.inv(mat).T @ y2
    terms = [
        FitTerm("A", x1 @ y1.T, y1 @ y1.T, (x1 * x1).sum(1)),
        FitTerm("A^-T", x2 @ y2.T, y2 @ y2.T, (x2 * x2).sum(1)),
    ]
    g, val = fit_element(fam, "identity", terms)
    assert torch.allclose(g.matrix(), mat, atol=1e-9)
    assert val == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fam", ["orthogonal", "general_linear"])
def test_dense_batch_equals_one_fit_per_problem(fam):
    """fit_dense_batch on a (3, 2) batch of problems (A and A^-T terms, A's and B's statistics
    broadcast against each other) returns what fit_element finds for each problem alone."""
    from intertwiner.groups import fit_dense_batch

    gen = torch.Generator().manual_seed(1)
    n, m = 5, 11
    x1 = torch.randn(3, 1, n, m, generator=gen, dtype=torch.float64)
    y1 = torch.randn(1, 2, n, m, generator=gen, dtype=torch.float64)
    x2 = torch.randn(3, 1, n, m, generator=gen, dtype=torch.float64)
    y2 = torch.randn(1, 2, n, m, generator=gen, dtype=torch.float64)
    batch = [
        FitTerm("A", x1 @ y1.transpose(-1, -2), y1 @ y1.transpose(-1, -2), (x1 * x1).sum(-1)),
        FitTerm("A^-T", x2 @ y2.transpose(-1, -2), y2 @ y2.transpose(-1, -2), (x2 * x2).sum(-1)),
    ]
    mats, vals = fit_dense_batch(fam, batch)
    assert mats.shape == (3, 2, n, n) and vals.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            one = [
                FitTerm("A", x1[i, 0] @ y1[0, j].T, y1[0, j] @ y1[0, j].T, (x1[i, 0] ** 2).sum(1)),
                FitTerm("A^-T", x2[i, 0] @ y2[0, j].T, y2[0, j] @ y2[0, j].T, (x2[i, 0] ** 2).sum(1)),
            ]  # fmt: skip
            g, val = fit_element(fam, "identity", one)
            assert torch.allclose(mats[i, j], g.matrix(), atol=1e-9)
            assert float(vals[i, j]) == pytest.approx(val, rel=1e-9)
            # J at the returned matrix is the value returned (an independent evaluation).
            mk = mats[i, j]
            direct = ((x1[i, 0] - mk @ y1[0, j]) ** 2).sum()
            direct += ((x2[i, 0] - torch.linalg.inv(mk).T @ y2[0, j]) ** 2).sum()
            assert float(direct) == pytest.approx(val, rel=1e-9)


def test_fit_element_for_c_p_matches_brute_force_over_perms_and_a_grid_of_c():
    """``c P``: Hungarian on the assignment and the best common factor, with rows moved by A and
    by A^-T (two exponents); equal to brute force over every permutation and a fine grid of c."""
    import itertools

    from intertwiner.groups import SCALED_PERMUTATION, FitTerm, fit_element

    g = torch.Generator().manual_seed(11)
    n = 4
    y = torch.randn(n, 6, generator=g, dtype=torch.float64)
    r = torch.randn(n, 3, generator=g, dtype=torch.float64)
    perm, c = torch.randperm(n, generator=g), 1.7
    x = c * y[perm] + 0.05 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    xr = r[perm] / c + 0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    terms = [
        FitTerm("A", x @ y.T, (y * y).sum(1), (x * x).sum(1)),
        FitTerm("A^-T", xr @ r.T, (r * r).sum(1), (xr * xr).sum(1)),
    ]
    e, cost = fit_element(SCALED_PERMUTATION, "identity", terms)
    assert SCALED_PERMUTATION.contains(e)
    got = float(
        ((x - e.apply(y, 0)) ** 2).sum() + ((xr - e.inverse().transpose().apply(r, 0)) ** 2).sum()
    )
    assert got == pytest.approx(cost, rel=1e-9)
    grid = torch.linspace(0.5, 3.0, 5001, dtype=torch.float64)
    brute = min(
        float(
            (((x.unsqueeze(0) - grid[:, None, None] * y[list(p)]) ** 2).sum((1, 2))
             + ((xr.unsqueeze(0) - r[list(p)] / grid[:, None, None]) ** 2).sum((1, 2))).min()
        )
        for p in itertools.permutations(range(n))
    )  # fmt: skip
    assert cost <= brute + 1e-9 and cost == pytest.approx(brute, rel=1e-5)
    assert e.perm.tolist() == perm.tolist()


@pytest.mark.parametrize("fam", ["permutation", "signed_permutation", "positive_monomial"])
def test_assignment_is_best_with_uneven_row_norms(fam):
    """Rows of very different norms put large row and column offsets into the pair costs (which
    the solver takes off before the assignment): the returned element still attains the smallest
    J over all 720 permutations of 6 units, and its J is the one reported."""
    gen = torch.Generator().manual_seed(4)
    n, m = 6, 4
    terms, raw = [], []
    for kind in ("A", "A^-T"):
        x = (
            torch.randn(n, m, generator=gen, dtype=torch.float64)
            * torch.logspace(-2, 2, n)[:, None]
        )
        y = (
            torch.randn(n, m, generator=gen, dtype=torch.float64)
            * torch.logspace(2, -2, n)[:, None]
        )
        terms.append(FitTerm(kind, x @ y.T, (y * y).sum(1), (x * x).sum(1)))
        raw.append((kind, x, y))
    cost, _ = pair_costs(fam, "identity", terms)
    best = min(float(cost[range(n), list(p)].sum()) for p in itertools.permutations(range(n)))
    el, val = fit_element(fam, "identity", terms)
    assert val == pytest.approx(best, rel=1e-12)
    mat = el.matrix()
    direct = 0.0
    for kind, x, y in raw:  # J at the element itself: A's rows against B's moved rows
        f = mat if kind == "A" else torch.linalg.inv(mat).T
        direct += float(((x - f @ y) ** 2).sum())
    assert direct == pytest.approx(val, rel=1e-9)
