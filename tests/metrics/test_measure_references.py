"""The new measures against independent implementations written here from the papers' formulas (and
scipy / scikit-learn where they compute the same thing), to 1e-10 in float64.

- CCA: the Bjorck-Golub route (QR of each centred side, singular values of Qx'Qy), not the
  covariance whitening the library uses; SVCCA: numpy SVD truncation (Raghu et al. 2017) then that
  CCA; PWCCA: Morcos et al. 2018's weights from the canonical variates in sample space.
- RSA: ``scipy.spatial.distance.pdist`` and ``scipy.stats.spearmanr`` / ``pearsonr``.
- Linear regression: ``sklearn.linear_model.LinearRegression`` and ``sklearn.metrics.r2_score``.
- Mutual k-NN and CKNNA: transcriptions of the Platonic Representation Hypothesis code.
- Shape metric: a transcription of netrep's ``whiten`` and ``LinearMetric`` (angular score) on
  inputs normalised to mean covariance eigenvalue 1, with scipy's ``orthogonal_procrustes``.
- Soft matching: scipy's ``linprog`` on the transport problem between neurons.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linprog
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

from intertwiner import metrics
from intertwiner.metrics import _shape

TOL = 1e-10


def _data(n=80, p=9, q=7, seed=0, shared=4):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, p)) + 0.7 * rng.standard_normal((n, p)) + 3.0
    y = z @ rng.standard_normal((shared, q)) + 0.9 * rng.standard_normal((n, q)) - 1.0
    return x, y


def _centre(a):
    return a - a.mean(0)


# ---- CCA family -------------------------------------------------------------------------------


def ref_canonical(x, y):
    """Canonical correlations and X's unit canonical variates, Bjorck-Golub (QR + SVD)."""
    qx, _ = np.linalg.qr(_centre(x))
    qy, _ = np.linalg.qr(_centre(y))
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx @ u  # columns: unit canonical variates h_i of X


def ref_svd_reduce(a, variance):
    """Raghu et al.: keep the top singular directions explaining ``variance`` of the variance."""
    u, s, _ = np.linalg.svd(_centre(a), full_matrices=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(frac, variance) + 1)
    return u[:, :k] * s[:k]


def ref_pwcca(x, y):
    """Morcos et al.: sum_i a_i rho_i, a_i ~ sum_j |<h_i, x_j>| (centred neurons x_j of X)."""
    rho, h = ref_canonical(x, y)
    r = len(rho)
    weights = np.abs(h[:, :r].T @ _centre(x)).sum(1)
    return float((weights / weights.sum()) @ rho)


@pytest.mark.parametrize("seed", [0, 1])
def test_cca_family_equals_reference_formulas(seed):
    x, y = _data(seed=seed)
    rho, _ = ref_canonical(x, y)
    assert metrics.cca(x, y) == pytest.approx(rho.mean(), abs=TOL)
    assert metrics.cca(x, y, statistic="yanai") == pytest.approx((rho**2).mean(), abs=TOL)
    assert metrics.metric("cca_yanai")(x, y) == pytest.approx((rho**2).mean(), abs=TOL)
    assert metrics.pwcca(x, y) == pytest.approx(ref_pwcca(x, y), abs=TOL)
    for variance in (0.5, 0.9, 0.99):
        rx, ry = ref_svd_reduce(x, variance), ref_svd_reduce(y, variance)
        want = ref_canonical(rx, ry)[0].mean()
        assert metrics.svcca(x, y, variance=variance) == pytest.approx(want, abs=TOL)
    want = ref_canonical(_centre(x) @ np.linalg.svd(_centre(x))[2][:3].T, y)[0]
    both = ref_canonical(
        _centre(x) @ np.linalg.svd(_centre(x))[2][:3].T,
        _centre(y) @ np.linalg.svd(_centre(y))[2][:3].T,
    )[0]
    assert metrics.svcca(x, y, dims=3) == pytest.approx(both.mean(), abs=TOL)
    assert not np.allclose(want, both)  # the reduction of Y matters: the test can fail


def test_svcca_with_all_variance_is_cca_and_pwcca_differs():
    x, y = _data(seed=3)
    assert metrics.svcca(x, y, variance=1.0) == pytest.approx(metrics.cca(x, y), abs=TOL)
    assert abs(metrics.pwcca(x, y) - metrics.cca(x, y)) > 1e-3


def test_cca_conv_rows_are_positions():
    """Conv features: one row per input and pixel (the reference gets the explicit matrix)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 3, 4, 4))
    y = np.concatenate([x[:, :2] ** 2, rng.standard_normal((20, 2, 4, 4))], 1)
    mx = x.transpose(0, 2, 3, 1).reshape(-1, 3)
    my = y.transpose(0, 2, 3, 1).reshape(-1, 4)
    assert metrics.cca(x, y) == pytest.approx(ref_canonical(mx, my)[0].mean(), abs=TOL)
    assert metrics.pwcca(x, y) == pytest.approx(ref_pwcca(mx, my), abs=TOL)


# ---- Linear regression ----------------------------------------------------------------------


def test_linear_regression_equals_sklearn():
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    x, y = _data(seed=4)

    def r2(a, b, how):
        return r2_score(b, LinearRegression().fit(a, b).predict(a), multioutput=how)

    vw, uni = "variance_weighted", "uniform_average"
    assert metrics.linear_regression(x, y) == pytest.approx(r2(x, y, vw), abs=TOL)
    got = metrics.linear_regression(x, y, direction="y_to_x")
    assert got == pytest.approx(r2(y, x, vw), abs=TOL)
    got = metrics.linear_regression(x, y, direction="both")
    assert got == pytest.approx((r2(x, y, vw) + r2(y, x, vw)) / 2, abs=TOL)
    got = metrics.linear_regression(x, y, average="uniform")
    assert got == pytest.approx(r2(x, y, uni), abs=TOL)
    assert abs(r2(x, y, vw) - r2(x, y, uni)) > 1e-4  # the two averages differ here


# ---- RSA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rdm", ["correlation", "euclidean", "cosine"])
@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_equals_scipy(rdm, compare):
    x, y = _data(n=40, seed=6)
    y = np.tanh(y)
    corr = spearmanr if compare == "spearman" else pearsonr
    want = corr(pdist(x, rdm), pdist(y, rdm))[0]
    assert metrics.rsa(x, y, rdm=rdm, compare=compare) == pytest.approx(want, abs=TOL)


def test_rsa_ties_get_average_ranks_like_scipy():
    """Small integer features: many exactly tied distances, and a duplicated input (distance 0)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, (25, 4)).astype(float)
    y = rng.integers(0, 3, (25, 5)).astype(float)
    x[3] = x[4]
    assert len(np.unique(pdist(x))) < len(pdist(x)) / 4  # the test has ties to handle
    want = spearmanr(pdist(x, "euclidean"), pdist(y, "euclidean"))[0]
    assert metrics.rsa(x, y, rdm="euclidean") == pytest.approx(want, abs=TOL)


def test_rsa_conv_features_are_flattened_per_input():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((15, 2, 3, 3))
    y = rng.standard_normal((15, 7))
    want = spearmanr(pdist(x.reshape(15, -1), "correlation"), pdist(y, "correlation"))[0]
    assert metrics.rsa(x, y) == pytest.approx(want, abs=TOL)


# ---- k-NN measures (transcribed from the Platonic Representation Hypothesis code) ------------


def prh_nearest(feats, topk):
    return (feats @ feats.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk]


def prh_mutual_knn(a, b, topk):
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    ka, kb = prh_nearest(a, topk), prh_nearest(b, topk)
    n = ka.shape[0]
    r = torch.arange(n).unsqueeze(1)
    ma = torch.zeros(n, n, dtype=a.dtype)
    mb = torch.zeros(n, n, dtype=a.dtype)
    ma[r, ka] = 1.0
    mb[r, kb] = 1.0
    return ((ma * mb).sum(dim=1) / topk).mean().item(), ma, mb


def prh_hsic_unbiased(k, l):
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    v = (
        torch.sum(kt * lt.T)
        + torch.sum(kt) * torch.sum(lt) / ((m - 1) * (m - 2))
        - 2 * torch.sum(torch.mm(kt, lt)) / (m - 2)
    )
    return v / (m * (m - 3))


def prh_cknna(a, b, topk):
    """PRH's cknna (unbiased=True), without its +1e-6 in the denominator."""
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    k, l = a @ a.T, b @ b.T
    n = k.shape[0]

    def similarity(k, l):
        kh = k.clone().fill_diagonal_(float("-inf"))
        lh = l.clone().fill_diagonal_(float("-inf"))
        _, ik = torch.topk(kh, topk, dim=1)
        _, il = torch.topk(lh, topk, dim=1)
        mk = torch.zeros(n, n, dtype=k.dtype).scatter_(1, ik, 1)
        ml = torch.zeros(n, n, dtype=k.dtype).scatter_(1, il, 1)
        mask = mk * ml
        return prh_hsic_unbiased(mask * k, mask * l)

    return (similarity(k, l) / torch.sqrt(similarity(k, k) * similarity(l, l))).item()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_measures_equal_prh_code(k):
    x, y = (torch.from_numpy(a) for a in _data(n=60, seed=9))
    want, ma, mb = prh_mutual_knn(x, y, k)
    assert metrics.mutual_knn(x, y, k=k) == pytest.approx(want, abs=TOL)
    o = (ma * mb).sum(1)
    assert metrics.knn_jaccard(x, y, k=k) == pytest.approx((o / (2 * k - o)).mean().item(), abs=TOL)
    if k >= 2:
        assert metrics.cknna(x, y, k=k) == pytest.approx(prh_cknna(x, y, k), abs=TOL)


def test_knn_ties_are_the_expectation_over_tie_breaks():
    """Duplicated inputs tie; the value is the mean of the PRH value over every order of the
    inputs (stable sort: ties broken by position), here with ties in X only."""
    rng = np.random.default_rng(10)
    x = torch.from_numpy(rng.standard_normal((6, 3)))
    x[4] = x[1]
    x[5] = x[1]
    y = torch.from_numpy(rng.standard_normal((6, 3)))
    k = 2
    values = []
    for perm in itertools.permutations(range(6)):
        p = torch.tensor(perm)
        a = torch.nn.functional.normalize(x[p], dim=-1)
        b = torch.nn.functional.normalize(y[p], dim=-1)
        ka = (a @ a.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True, stable=True)[:, :k]
        kb = (b @ b.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True, stable=True)[:, :k]
        shared = [len(set(ka[i].tolist()) & set(kb[i].tolist())) for i in range(6)]
        values.append(np.mean(shared) / k)
    assert len(set(np.round(values, 12))) > 1  # the PRH value depends on the order here
    assert metrics.mutual_knn(x, y, k=k) == pytest.approx(np.mean(values), abs=TOL)


# ---- Shape metrics --------------------------------------------------------------------------


def netrep_whiten(x, alpha, preserve_variance=True, eigval_tol=1e-7):
    """netrep.utils.whiten, transcribed."""
    if alpha > (1 - eigval_tol):
        return x, np.eye(x.shape[1])
    lam, v = np.linalg.eigh(x.T @ x)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** (-1 / 2)
    if preserve_variance:
        new_var = np.sum(
            (alpha**2) * lam + 2 * alpha * (1 - alpha) * (lam**0.5) + ((1 - alpha) ** 2)
        )
        d *= np.sqrt(np.sum(lam) / new_var)
    z = (v * d[None, :]) @ v.T
    return x @ z, z


def netrep_angular(x, y, alpha):
    """netrep LinearMetric(alpha, center_columns=True, zero_pad=True, score_method="angular")
    on inputs normalised so that X'X has mean eigenvalue 1 (the library's scale-free choice)."""
    x, y = _centre(x), _centre(y)
    x = x / np.sqrt(np.trace(x.T @ x) / x.shape[1])
    y = y / np.sqrt(np.trace(y.T @ y) / y.shape[1])
    tx, _ = netrep_whiten(x, alpha)
    ty, _ = netrep_whiten(y, alpha)
    width = max(tx.shape[1], ty.shape[1])
    tx = np.pad(tx, ((0, 0), (0, width - tx.shape[1])))
    ty = np.pad(ty, ((0, 0), (0, width - ty.shape[1])))
    r, _ = scipy.linalg.orthogonal_procrustes(tx, ty)
    cos = np.sum((tx @ r) * ty) / (np.linalg.norm(tx) * np.linalg.norm(ty))
    return math.acos(min(cos, 1.0))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_shape_distance_equals_netrep(alpha):
    x, y = _data(seed=11)
    want = netrep_angular(x, y, alpha)
    assert metrics.shape_distance(x, y, alpha) == pytest.approx(want, abs=TOL)
    got = metrics.shape_distance(x, y, alpha, score="euclidean")
    assert got == pytest.approx(math.sqrt(2 - 2 * math.cos(want)), abs=TOL)


def test_shape_distance_ends_are_procrustes_and_cca():
    x, y = _data(seed=12, p=6, q=6)
    proc = metrics.procrustes_distance(x, y, center=True)
    assert metrics.shape_distance(x, y, 1.0) == pytest.approx(proc, abs=TOL)
    rho, _ = ref_canonical(x, y)
    want = math.acos(rho.sum() / math.sqrt(6 * 6))
    assert metrics.shape_distance(x, y, 0.0) == pytest.approx(want, abs=TOL)


def test_grelu_shape_distance_is_grelu_procrustes_on_centred_neurons():
    x, y = (np.maximum(a, 0.0) for a in _data(seed=13))
    want = metrics.procrustes_distance(_centre(x), _centre(y), group="positive_monomial")
    for alpha in (0.0, 0.5, 1.0):  # free scales: alpha cannot matter
        got = metrics.shape_distance(x, y, alpha, group="positive_monomial")
        assert got == pytest.approx(want, abs=TOL)


def ref_soft_matching(x, y):
    """Khosla & Williams: optimal transport between centred neurons (uniform marginals), each side
    scaled to mean squared neuron norm 1; solved by scipy's linprog on the full plan."""
    x, y = _centre(x), _centre(y)
    x = x / np.sqrt((x**2).sum() / x.shape[1])
    y = y / np.sqrt((y**2).sum() / y.shape[1])
    p, q = x.shape[1], y.shape[1]
    cost = ((x.T[:, None, :] - y.T[None, :, :]) ** 2).sum(-1)
    a_eq = np.zeros((p + q, p * q))
    for i in range(p):
        a_eq[i, i * q : (i + 1) * q] = 1.0
    for j in range(q):
        a_eq[p + j, j::q] = 1.0
    b_eq = np.concatenate([np.full(p, 1 / p), np.full(q, 1 / q)])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    return math.sqrt(res.fun)


@pytest.mark.parametrize(("p", "q"), [(6, 6), (9, 6), (7, 5)])
def test_soft_matching_equals_linear_program(p, q, monkeypatch):
    x, y = _data(seed=14, p=p, q=q)
    want = ref_soft_matching(x, y)
    assert metrics.soft_matching_distance(x, y) == pytest.approx(want, abs=1e-9)
    monkeypatch.setattr(_shape, "MAX_REPLICATED", 1)  # the library's linear-program path
    assert metrics.soft_matching_distance(x, y) == pytest.approx(want, abs=1e-9)


def test_blockwise_rdm_and_neighbours_match_the_references(monkeypatch):
    """Blocks of rows smaller than N: the same values as the references."""
    from intertwiner.metrics import _knn, _rsa

    monkeypatch.setattr(_rsa, "BLOCK_ROWS", 7)
    monkeypatch.setattr(_knn, "BLOCK_ROWS", 5)
    monkeypatch.setattr(_knn, "GRAM_BYTES", 0)  # the blockwise products, not the whole Gram
    x, y = _data(n=33, seed=15)
    for rdm in ("euclidean", "correlation"):
        want = spearmanr(pdist(x, rdm), pdist(y, rdm))[0]
        assert metrics.rsa(x, y, rdm=rdm) == pytest.approx(want, abs=TOL)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert metrics.mutual_knn(x, y, k=4) == pytest.approx(prh_mutual_knn(tx, ty, 4)[0], abs=TOL)
    assert metrics.cknna(x, y, k=4) == pytest.approx(prh_cknna(tx, ty, 4), abs=TOL)


def test_cca_family_equals_repsim_when_installed():
    """The repsim package (PyPI, C++; optional): Yanai's R^2 and Pillai-normalised mean rho for
    CCA, and PWCCA averaged over both directions (repsim symmetrises). Its SVCCA keeps every
    direction on data where 99% of the variance (squared singular values, Raghu et al.) is in 3 of
    12: its threshold is another one, so SVCCA is not compared."""
    repsim = pytest.importorskip("repsim")
    rng = np.random.default_rng(16)
    z = rng.standard_normal((300, 3))
    x = z @ rng.standard_normal((3, 12)) + 0.05 * rng.standard_normal((300, 12))
    y = z @ rng.standard_normal((3, 8)) + 0.3 * rng.standard_normal((300, 8))
    pairs = [
        (repsim.cca([x, y])[0, 1], metrics.cca(x, y, statistic="yanai")),
        (repsim.cca([x, y], "pillai")[0, 1], metrics.cca(x, y)),
        (repsim.pwcca([x, y])[0, 1], (metrics.pwcca(x, y) + metrics.pwcca(y, x)) / 2),
    ]
    for theirs, ours in pairs:
        assert ours == pytest.approx(theirs, abs=1e-10)
