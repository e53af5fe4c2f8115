"""Closed-form solvers and activation matching against textbook formulas and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from intertwiner.errors import NonFiniteError, TooFewSamplesError
from intertwiner.stitching import FeatureStats
from intertwiner.stitching import _solvers as solvers


def _stats(x, y, chunks=3):
    st = FeatureStats(x.shape[1], y.shape[1])
    for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
        st.update(xb, yb)
    return st


def _data(n=400, c_in=6, c_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, generator=g, dtype=torch.float64)
    m = torch.randn(c_out, c_in, generator=g, dtype=torch.float64)
    y = x @ m.T + 0.3 * torch.randn(n, c_out, generator=g, dtype=torch.float64) + 1.0
    return x, y


@pytest.mark.parametrize("bias", [False, True])
def test_lstsq_matches_numpy(bias):
    x, y = _data()
    m, b = solvers.lstsq(_stats(x, y), bias=bias, ridge=0.0)
    design = np.hstack([x.numpy(), np.ones((len(x), 1))]) if bias else x.numpy()
    sol = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(m.numpy(), sol[: x.shape[1]].T, atol=1e-10)
    if bias:
        np.testing.assert_allclose(b.numpy(), sol[-1], atol=1e-10)
    else:
        assert b is None


def test_streaming_equals_one_shot():
    x, y = _data()
    a, b = _stats(x, y, chunks=1), _stats(x, y, chunks=7)
    for u, v in zip(a.moments(True), b.moments(True)):
        torch.testing.assert_close(u, v)


def test_procrustes_matches_scipy():
    x, y = _data(c_out=6)
    q, _ = solvers.procrustes(_stats(x, y), bias=False)
    r, _ = scipy.linalg.orthogonal_procrustes(x.numpy(), y.numpy())  # min ||x R - y||
    np.testing.assert_allclose(q.numpy(), r.T, atol=1e-10)


def test_reduced_rank_is_optimal_among_rank_r():
    x, y = _data(c_out=6)
    st = _stats(x, y)
    full, _ = solvers.lstsq(st, bias=False, ridge=0.0)
    up, down, _ = solvers.reduced_rank(st, 6, bias=False, ridge=0.0)
    torch.testing.assert_close(up @ down, full)
    up, down, _ = solvers.reduced_rank(st, 2, bias=False, ridge=0.0)
    assert torch.linalg.matrix_rank(up @ down) == 2
    u, s, vh = torch.linalg.svd(full)
    truncated = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]  # a worse rank-2 candidate in general
    assert st.residual(up @ down) <= st.residual(truncated) + 1e-12
    g = torch.Generator().manual_seed(3)
    for _ in range(20):  # no random rank-2 perturbation beats it
        cand = (up + 0.05 * torch.randn(up.shape, generator=g, dtype=up.dtype)) @ down
        assert st.residual(up @ down) <= st.residual(cand) + 1e-12


def test_residual_equals_direct_computation():
    x, y = _data()
    m = torch.randn(5, 6, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    direct = ((x @ m.T + b - y) ** 2).sum() / (y**2).sum()
    assert _stats(x, y).residual(m, b) == pytest.approx(float(direct), rel=1e-10)


@pytest.mark.parametrize("kind", ["perm_scale", "signed_perm", "monomial", "permutation"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_match_recovers_a_planted_monomial(kind, dtype):
    g = torch.Generator().manual_seed(0)
    n = 12
    x = torch.relu(torch.randn(500, n, generator=g, dtype=torch.float64)) + 0.1 * torch.rand(
        500, n, generator=g, dtype=torch.float64
    )
    perm = torch.randperm(n, generator=g)
    scale = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    if kind in ("signed_perm", "monomial"):
        scale = scale * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    if kind in ("signed_perm", "permutation"):
        scale = scale.sign()
    y = (x[:, perm] * scale).to(dtype)
    got_perm, got_scale, _ = solvers.match(_stats(x.to(dtype), y), kind, bias=False)
    assert torch.equal(got_perm, perm)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got_scale, scale, rtol=tol, atol=tol)


def test_match_perm_scale_clamps_negative_scales():
    x = torch.rand(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = -x  # only anti-correlated pairs exist
    _, scale, _ = solvers.match(_stats(x, y), "perm_scale", bias=False)
    assert torch.all(scale >= 0)


def test_bad_statistics():
    st = FeatureStats(2, 2)
    with pytest.raises(TooFewSamplesError):
        st.moments(True)
    with pytest.raises(NonFiniteError):
        st.update(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))


def test_assignment_converged_compares_objectives():
    g = torch.Generator().manual_seed(0)
    n = 10
    x = torch.relu(torch.randn(400, n, generator=g, dtype=torch.float64)) + 0.1
    perm = torch.randperm(n, generator=g)
    scale = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    st = _stats(x, x[:, perm] * scale)
    got, _ = solvers.assignment(st, "perm_scale", bias=False)
    assert torch.equal(got, perm)
    ok, current = solvers.assignment_converged(st, "perm_scale", perm, bias=False)
    assert ok and torch.equal(current, perm)
    # Swapping the two units with the largest scales costs far more than tol of E||y||^2.
    a, b = scale.argsort()[-2:].tolist()
    wrong = perm.clone()
    wrong[[a, b]] = perm[[b, a]]
    ok, current = solvers.assignment_converged(st, "perm_scale", wrong, bias=False, tol=1e-3)
    assert not ok and torch.equal(current, perm)
    # ... but is within a loose enough tolerance (the test is on the objective, not the labels).
    _, gain = solvers.assignment(st, "perm_scale", bias=False)
    idx = torch.arange(n)
    loss = float(gain[idx, perm].sum() - gain[idx, wrong].sum())
    total = float((x[:, perm] * scale).pow(2).mean(0).sum())
    assert solvers.assignment_converged(
        st, "perm_scale", wrong, bias=False, tol=1.01 * loss / total
    )[0]


def test_float32_features_agree_with_float64_moments():
    # float32 features take the blocked float32 products; they must match the float64 path.
    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(20000, 12, generator=g)) * 3.0
    y = torch.relu(x[:, :9] @ torch.randn(9, 7, generator=g) + 0.5)
    fast = FeatureStats(12, 7, block_rows=1000)
    exact = FeatureStats(12, 7)
    for xb, yb in zip(x.chunk(3), y.chunk(3)):
        fast.update(xb, yb)
        exact.update(xb.double(), yb.double())
    for u, v in zip(fast.moments(True), exact.moments(True)):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_diagonal_only_statistics():
    x, y = _data(c_out=6)
    full, diag = FeatureStats(6, 6), FeatureStats(6, 6, cross_x=False)
    for xb, yb in zip(x.chunk(4), y.chunk(4)):
        full.update(xb, yb)
        diag.update(xb, yb)
    torch.testing.assert_close(diag.var_x(True), full.var_x(True))
    for kind in ("perm_scale", "signed_perm", "monomial", "permutation"):
        for a, b in zip(solvers.match(full, kind, bias=True), solvers.match(diag, kind, bias=True)):
            torch.testing.assert_close(a, b)
    s_full, _ = solvers.diagonal(full, bias=False)
    s_diag, _ = solvers.diagonal(diag, bias=False)
    torch.testing.assert_close(s_full, s_diag)
    # the residual of a monomial map needs only the diagonal; a dense map needs the full matrix
    mono = torch.zeros(6, 6, dtype=torch.float64)
    mono[torch.arange(6), torch.tensor([2, 0, 1, 5, 3, 4])] = torch.linspace(-1.0, 2.0, 6).double()
    b = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    assert diag.residual(mono, b) == pytest.approx(full.residual(mono, b), rel=1e-12)
    with pytest.raises(ValueError, match="cross_x=True"):
        diag.residual(torch.ones(6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="cross_x=True"):
        solvers.lstsq(diag, bias=False)
