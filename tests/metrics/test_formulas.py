"""Agreement with independent formulas: textbook HSIC, the U-statistic, brute force over
permutations, the SVD solution of orthogonal Procrustes, and straightforward re-implementations of
the paper's definitions (paper.md section 6)."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from intertwiner.metrics import (
    cka,
    group_cka,
    hsic_gram,
    procrustes_distance,
    procrustes_similarity,
)
from intertwiner.metrics.group_cka import kernel_matrix, preprocess

from .conftest import relu_features


def rand(shape, seed, relu=False):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.maximum(x + 0.3, 0) if relu else x


# ---- CKA ------------------------------------------------------------------------------------------
def textbook_linear_cka(x, y):
    """tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) with Gram matrices of the flattened inputs."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def u_statistic_hsic(k, l):
    """Song et al. (2012): the U-statistic over ordered 4-tuples of distinct indices, O(n^4)."""
    n = len(k)
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total / math.perm(n, 4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 30), p=st.integers(1, 12), q=st.integers(1, 40), seed=st.integers(0, 99))
def test_linear_cka_equals_textbook_hsic(n, p, q, seed):
    x, y = rand((n, p), seed), rand((n, q), seed + 1)
    assert cka(x, y) == pytest.approx(textbook_linear_cka(x, y), abs=1e-10)


def test_linear_cka_conv_layout_flattens_each_input():
    x, y = rand((20, 3, 4, 4), 0), rand((20, 5, 2, 2), 1)
    assert cka(x, y) == pytest.approx(textbook_linear_cka(x, y), abs=1e-10)


@pytest.mark.parametrize("n", [5, 7])
def test_debiased_hsic_equals_u_statistic(n):
    x, y = rand((n, 3), n), rand((n, 4), n + 1)
    k, l = x @ x.T, y @ y.T
    assert hsic_gram(torch.from_numpy(k), torch.from_numpy(l), debiased=True) == pytest.approx(
        u_statistic_hsic(k, l), rel=1e-10, abs=1e-12
    )


@pytest.mark.parametrize("n,p", [(7, 3), (6, 20)])  # feature-space and Gram-space paths
def test_debiased_cka_equals_u_statistic_cka(n, p):
    x, y = rand((n, p), 3), rand((n, p + 1), 4)
    k, l = x @ x.T, y @ y.T
    want = u_statistic_hsic(k, l) / math.sqrt(u_statistic_hsic(k, k) * u_statistic_hsic(l, l))
    assert cka(x, y, debiased=True) == pytest.approx(want, rel=1e-9)


def test_rbf_cka_matches_a_direct_gram_computation():
    x, y = rand((15, 4), 5), rand((15, 3), 6)

    def rbf(a):
        sq = ((a[:, None] - a[None]) ** 2).sum(-1)
        sigma2 = np.median(sq[np.triu_indices(len(a), 1)])
        return np.exp(-sq / (2 * sigma2))

    k, l = rbf(x - x.mean(0)), rbf(y - y.mean(0))
    n = len(x)
    h = np.eye(n) - 1 / n
    want = np.trace(k @ h @ l @ h) / math.sqrt(np.trace(k @ h @ k @ h) * np.trace(l @ h @ l @ h))
    assert cka(x, y, kernel="rbf") == pytest.approx(want, abs=1e-10)


# ---- Procrustes -----------------------------------------------------------------------------------
def brute_force_euclidean(x, y, signed=False, per_neuron=False):
    """min over (signed) permutations of |X^ - Y^ P|_F with the metric's normalisation."""
    if per_neuron:
        x = x / np.linalg.norm(x, axis=0)
        y = y / np.linalg.norm(y, axis=0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    c = x.shape[1]
    best = np.inf
    signs = list(itertools.product([1, -1], repeat=c)) if signed else [(1,) * c]
    for perm in itertools.permutations(range(c)):
        for s in signs:
            best = min(best, np.linalg.norm(x - y[:, perm] * np.array(s)))
    return best


@pytest.mark.parametrize(
    "group,signed,per_neuron,cmax",
    [
        ("permutation", False, False, 6),
        ("signed_permutation", True, False, 4),
        ("positive_monomial", False, True, 6),
        ("monomial", True, True, 4),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_assignment_procrustes_equals_brute_force(group, signed, per_neuron, cmax, seed):
    c = 2 + seed % (cmax - 1)
    x = rand((30, c), seed)
    y = x[:, ::-1] * rand((1, c), seed + 7) + 0.7 * rand((30, c), seed + 9)
    want = brute_force_euclidean(x, y, signed, per_neuron)
    got = procrustes_distance(x, y, group=group, kind="euclidean")
    assert got == pytest.approx(want, abs=1e-10)
    # angular and euclidean describe the same optimum: |a - b|^2 = 2 - 2 cos
    ang = procrustes_distance(x, y, group=group)
    assert 2 - 2 * math.cos(ang) == pytest.approx(want**2, abs=1e-10)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 40), c=st.integers(1, 8), seed=st.integers(0, 99))
def test_orthogonal_procrustes_equals_svd_solution(n, c, seed):
    x, y = rand((n, c), seed), rand((n, c), seed + 1)
    xh, yh = x / np.linalg.norm(x), y / np.linalg.norm(y)
    u, _, vt = np.linalg.svd(yh.T @ xh)
    q = u @ vt  # argmin_Q |X - Y Q|_F over orthogonal Q (Schoenemann)
    assert procrustes_distance(x, y, kind="euclidean") == pytest.approx(
        np.linalg.norm(xh - yh @ q), abs=1e-7
    )
    nuc = np.linalg.norm(xh.T @ yh, ord="nuc")
    assert procrustes_distance(x, y) == pytest.approx(math.acos(min(nuc, 1.0)), abs=1e-7)


def upsample_nearest(h, size):
    fy, fx = size[0] // h.shape[2], size[1] // h.shape[3]
    return h.repeat(fy, axis=2).repeat(fx, axis=3)


def paper_preprocess(h1, h2):
    """Paper step 1: upsample the smaller spatial map, zero-pad the smaller channel count."""
    size = (max(h1.shape[2], h2.shape[2]), max(h1.shape[3], h2.shape[3]))
    h1, h2 = upsample_nearest(h1, size), upsample_nearest(h2, size)
    c = max(h1.shape[1], h2.shape[1])

    def pad(h):
        return np.pad(h, ((0, 0), (0, c - h.shape[1]), (0, 0), (0, 0)))

    return pad(h1), pad(h2), c


def paper_g_relu_procrustes_similarity(h1, h2):
    """paper.md section 6, wreath_procrustes, steps 1-5."""
    h1, h2, c = paper_preprocess(h1, h2)
    v1 = h1.transpose(1, 0, 2, 3).reshape(c, -1)  # channel c -> vector in R^{N h w}
    v2 = h2.transpose(1, 0, 2, 3).reshape(c, -1)
    n1 = np.linalg.norm(v1, axis=1, keepdims=True)
    n2 = np.linalg.norm(v2, axis=1, keepdims=True)
    v1 = np.divide(v1, n1, out=np.zeros_like(v1), where=n1 > 0)
    v2 = np.divide(v2, n2, out=np.zeros_like(v2), where=n2 > 0)
    corr = v1 @ v2.T
    r, col = linear_sum_assignment(corr, maximize=True)
    d2 = (v1**2).sum() + (v2**2).sum() - 2 * corr[r, col].sum()
    return 1 - math.sqrt(d2 / (4 * c))


def paper_orthogonal_procrustes_similarity(h1, h2):
    h1, h2, c = paper_preprocess(h1, h2)
    m1 = h1.transpose(0, 2, 3, 1).reshape(-1, c)
    m2 = h2.transpose(0, 2, 3, 1).reshape(-1, c)
    m1, m2 = m1 / np.linalg.norm(m1), m2 / np.linalg.norm(m2)
    nuc = np.linalg.norm(m1.T @ m2, ord="nuc")
    return 1 - 0.5 * math.sqrt(2 - 2 * nuc)


@pytest.mark.parametrize("seed", range(4))
def test_procrustes_similarity_equals_paper_formulas(seed):
    rng = np.random.default_rng(seed)
    c1, c2 = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    s1, s2 = (4, 4), (4, 4) if seed % 2 else (2, 2)  # odd seeds: same size; even: upsampling
    h1 = rand((6, c1, *s1), seed, relu=True)
    h2 = rand((6, c2, *s2), seed + 50, relu=True)
    up = s1 != s2
    assert procrustes_similarity(h1, h2, group="positive_monomial", upsample=up) == pytest.approx(
        paper_g_relu_procrustes_similarity(h1, h2), abs=1e-10
    )
    assert procrustes_similarity(h1, h2, group="orthogonal", upsample=up) == pytest.approx(
        paper_orthogonal_procrustes_similarity(h1, h2), abs=1e-10
    )


def test_paper_similarity_relates_to_euclidean_distance():
    x, y = rand((40, 5), 1, relu=True), rand((40, 5), 2, relu=True)
    for g in ("orthogonal", "positive_monomial"):
        d = procrustes_distance(x, y, group=g, kind="euclidean")
        assert procrustes_similarity(x, y, group=g) == pytest.approx(1 - d / 2, abs=1e-12)


# ---- group CKA -----------------------------------------------------------------------------------
def paper_g_relu_cka(h1, h2, reduce=np.max):
    """wreath_cka with explicit loops: per-channel centring/normalisation, K_ij = max_c <.,.>."""

    def kernel(h):
        h = h.reshape(h.shape[0], h.shape[1], -1)  # (N, C, hw)
        h = h - h.mean(axis=(0, 2), keepdims=True)
        h = h / np.linalg.norm(h, axis=(0, 2), keepdims=True)
        n = h.shape[0]
        k = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    k[i, j] = reduce([h[i, c] @ h[j, c] for c in range(h.shape[1])])
        return k

    k, l = kernel(h1), kernel(h2)
    n = len(k)

    def hsic1(a, b):
        return (
            np.trace(a @ b)
            + a.sum() * b.sum() / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (a.sum(0) @ b.sum(1))
        ) / (n * (n - 3))

    return hsic1(k, l) / math.sqrt(hsic1(k, k) * hsic1(l, l))


@pytest.mark.parametrize("chunk", [None, 3, 4])
def test_group_cka_equals_paper_loop(chunk):
    h1 = rand((11, 4, 3, 3), 0, relu=True)
    # Y shares a part of X so the value is far from 0 (different width and spatial size).
    h2 = rand((11, 6, 2, 2), 1, relu=True) + np.repeat(h1[:, :1, ::2, ::2], 6, axis=1)
    want = paper_g_relu_cka(h1, h2)
    assert group_cka(h1, h2, chunk_size=chunk) == pytest.approx(want, abs=1e-10)
    # "orthogonal CKA" of the paper: the same preprocessing with the sum over channels
    assert group_cka(h1, h2, reduce="sum", chunk_size=chunk) == pytest.approx(
        paper_g_relu_cka(h1, h2, reduce=np.sum), abs=1e-10
    )


def test_group_cka_biased_matches_gram_formula_on_its_kernel():
    x, y = relu_features((9, 3, 2, 2), 3), relu_features((9, 4), 4)
    k = kernel_matrix(preprocess(x, True, torch.float64))
    l = kernel_matrix(preprocess(y, True, torch.float64))
    from intertwiner.metrics.cka import gram_cka

    for debiased in (False, True):
        assert group_cka(x, y, debiased=debiased, chunk_size=2) == pytest.approx(
            gram_cka(k, l, debiased=debiased), abs=1e-10
        )


def test_group_cka_float32_products_are_close():
    x, y = relu_features((30, 5, 3, 3), 5), relu_features((30, 5, 3, 3), 6)
    a = group_cka(x, y)
    assert group_cka(x, y, dtype=torch.float32) == pytest.approx(a, abs=1e-5)


# ---- identical inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "group",
    ["orthogonal", "permutation", "signed_permutation", "positive_monomial", "monomial"],
)
def test_identical_inputs_are_at_distance_zero(group, layout_pair):
    _, x, _ = layout_pair
    assert procrustes_distance(x, x, group=group) == pytest.approx(0.0, abs=1e-7)
    assert procrustes_distance(x, x, group=group, kind="euclidean") == pytest.approx(0.0, abs=1e-7)
    assert procrustes_similarity(x, x, group=group) == pytest.approx(1.0, abs=1e-7)


def test_identical_inputs_have_similarity_one(layout_pair):
    _, x, _ = layout_pair
    for debiased in (False, True):
        assert cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
        assert cka(x, x, kernel="rbf", debiased=debiased) == pytest.approx(1.0, abs=1e-12)
        assert group_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
