"""Linear predictivity: the value against sklearn (``RidgeCV``'s efficient leave-one-out, the same
folds and penalties, per-neuron Pearson of pooled held-out predictions), against a brute-force
refit for conv and token layouts (leave one input out, all its positions), and its properties."""

import math
import warnings

import numpy as np
import pytest
import torch

from intertwiner import metrics
from intertwiner.errors import InvalidOptionError, NonFiniteError, TooFewSamplesError
from intertwiner.metrics._predictivity import PENALTIES

from .conftest import relu_features

sklearn_linear = pytest.importorskip("sklearn.linear_model")

TOL = 1e-8


def _folds(n, k, seed):
    """Independent of the implementation: a permutation from the seed, cut as numpy does."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.array_split(perm, k)


def _pooled_score(X, Y, pred, average):
    r = np.array([np.corrcoef(pred[:, j], Y[:, j])[0, 1] for j in range(Y.shape[1])])
    return float(np.median(r) if average == "median" else r.mean())


def _sklearn_predictivity(X, Y, folds=5, seed=0, average="median", penalties=PENALTIES):
    """Ridge via sklearn ``RidgeCV`` (LOO over training rows, one alpha for all standardised
    targets), alphas = penalties * top eigenvalue of the centred training X'X."""
    n = X.shape[0]
    pred = np.empty_like(Y)
    chosen = []
    for test in _folds(n, folds, seed):
        tr = np.setdiff1d(np.arange(n), test)
        s0 = np.linalg.svd(X[tr] - X[tr].mean(0), compute_uv=False)[0]
        ym = Y[tr].mean(0)
        sd = np.sqrt(((Y[tr] - ym) ** 2).sum(0))
        model = sklearn_linear.RidgeCV(alphas=np.array(penalties) * s0**2, fit_intercept=True)
        model.fit(X[tr], (Y[tr] - ym) / sd)
        chosen.append(model.alpha_ / s0**2)
        pred[test] = model.predict(X[test]) * sd + ym
    return _pooled_score(X, Y, pred, average), chosen


def _noisy_pair(n, p, q, seed, noise):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, p)) * g.uniform(0.2, 3.0, p)
    Y = X[:, :4] @ g.standard_normal((4, q)) + noise * g.standard_normal((n, q))
    return X, Y


@pytest.mark.parametrize(
    ("n", "p", "q", "noise", "folds", "seed", "average"),
    [(60, 8, 5, 0.5, 5, 0, "median"), (40, 30, 6, 3.0, 4, 1, "median"),
     (50, 12, 7, 1.5, 3, 2, "mean"), (31, 20, 4, 10.0, 5, 3, "median")],
)  # fmt: skip
def test_equals_sklearn_ridgecv_with_the_same_folds_and_penalties(
    n, p, q, noise, folds, seed, average
):
    X, Y = _noisy_pair(n, p, q, seed, noise)
    want, _ = _sklearn_predictivity(X, Y, folds, seed, average)
    got = metrics.linear_predictivity(X, Y, folds=folds, seed=seed, average=average)
    assert got == pytest.approx(want, abs=TOL)


def test_reference_cases_choose_different_penalties():
    """The reference is only a check of the penalty choice if the choice varies."""
    chosen = set()
    for args in ((60, 8, 5, 0.5, 0), (40, 30, 6, 3.0, 1), (31, 20, 4, 10.0, 3)):
        n, p, q, noise, seed = args
        X, Y = _noisy_pair(n, p, q, seed, noise)
        chosen.update(np.round(np.log10(_sklearn_predictivity(X, Y, seed=seed)[1])).tolist())
    assert len(chosen) >= 3


def _ridge(xtr, ytr, alpha):
    """Ridge with an unpenalised intercept by the normal equations; (weights, intercept)."""
    xm, ym = xtr.mean(0), ytr.mean(0)
    xc = xtr - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xtr.shape[1]), xc.T @ (ytr - ym))
    return w, ym - xm @ w


def _brute_force(x, y, folds, seed):
    """Sites (N, S, C): leave-one-input-out penalty choice by refitting, pooled Pearson, median."""
    n, s = x.shape[:2]
    pred = np.empty(y.shape)
    for test in _folds(n, folds, seed):
        tr = np.setdiff1d(np.arange(n), test)
        xtr, ytr = x[tr].reshape(-1, x.shape[2]), y[tr].reshape(-1, y.shape[2])
        s0 = np.linalg.svd(xtr - xtr.mean(0), compute_uv=False)[0]
        sd = ytr.std(0)
        errs = []
        for lam in PENALTIES:
            err = 0.0
            for g in range(len(tr)):
                keep = np.setdiff1d(np.arange(len(tr)), [g])
                a, b = x[tr][keep].reshape(-1, x.shape[2]), y[tr][keep].reshape(-1, y.shape[2])
                w, c = _ridge(a, b, lam * s0**2)
                err += float((((x[tr][g] @ w + c - y[tr][g]) / sd) ** 2).sum())
            errs.append(err)
        w, c = _ridge(xtr, ytr, PENALTIES[int(np.argmin(errs))] * s0**2)
        pred[test] = x[test] @ w + c
    flat = y.reshape(-1, y.shape[2])
    return _pooled_score(None, flat, pred.reshape(flat.shape), "median")


@pytest.mark.parametrize("layout", ["conv", "tokens"])
def test_conv_and_tokens_equal_a_brute_force_leave_one_input_out(layout):
    g = torch.Generator().manual_seed(5)
    if layout == "conv":
        x = torch.randn(12, 5, 2, 3, generator=g, dtype=torch.float64)
        y = torch.einsum("nchw,cd->ndhw", x, torch.randn(5, 4, generator=g, dtype=torch.float64))
        y = y + 2.0 * torch.randn(y.shape, generator=g, dtype=torch.float64)
        xs, ys = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)  # (N, S, C)
    else:
        x = torch.randn(10, 3, 6, generator=g, dtype=torch.float64)
        y = x[..., :4] + 1.5 * torch.randn(10, 3, 4, generator=g, dtype=torch.float64)
        xs, ys = x, y
    want = _brute_force(xs.numpy(), ys.numpy(), folds=4, seed=7)
    assert metrics.linear_predictivity(x, y, folds=4, seed=7) == pytest.approx(want, abs=TOL)


def test_held_out_inputs_are_not_seen_in_training():
    """Targets that are pure noise independent of X: a fit that saw the held-out inputs would
    correlate; cross-validated predictions do not (the median correlation is near 0)."""
    g = np.random.default_rng(0)
    X, Y = g.standard_normal((200, 40)), g.standard_normal((200, 30))
    assert abs(metrics.linear_predictivity(X, Y)) < 0.15
    assert metrics.linear_predictivity(X, X @ g.standard_normal((40, 30))) > 0.999


def test_seed_and_generator_give_the_same_folds():
    X, Y = _noisy_pair(40, 10, 5, 0, 2.0)
    a = metrics.linear_predictivity(X, Y, seed=3)
    assert metrics.linear_predictivity(X, Y, seed=torch.Generator().manual_seed(3)) == a
    assert metrics.linear_predictivity(X, Y, seed=4) != a  # other folds, another estimate


def test_asymmetric_and_average_option():
    X, Y = _noisy_pair(60, 8, 5, 0, 1.0)
    assert metrics.linear_predictivity(X, Y) != pytest.approx(
        metrics.linear_predictivity(Y, X), abs=1e-3
    )
    med = metrics.linear_predictivity(X, Y)
    mean = metrics.linear_predictivity(X, Y, average="mean")
    assert med != mean and -1.0 <= mean <= 1.0


def test_single_penalty_is_plain_ridge():
    X, Y = _noisy_pair(45, 9, 4, 2, 1.0)
    want, chosen = _sklearn_predictivity(X, Y, penalties=(0.01,))
    assert set(chosen) == {0.01}
    got = metrics.linear_predictivity(X, Y, penalties=(0.01,))
    assert got == pytest.approx(want, abs=TOL)


def test_degenerate_inputs():
    X, Y = _noisy_pair(30, 6, 4, 0, 1.0)
    with pytest.raises(InvalidOptionError):
        metrics.linear_predictivity(X, Y, folds=1)
    for bad in ((), (0.0, 1.0), (math.inf,), "a"):
        with pytest.raises(InvalidOptionError):
            metrics.linear_predictivity(X, Y, penalties=bad)
    with pytest.raises(InvalidOptionError):
        metrics.linear_predictivity(X, Y, average="max")
    with pytest.raises(TooFewSamplesError):
        metrics.linear_predictivity(X[:4], Y[:4], folds=5)
    with pytest.raises(TooFewSamplesError):
        metrics.linear_predictivity(X[:3], Y[:3], folds=2)  # 2 training inputs needed
    Xn = X.copy()
    Xn[2, 1] = math.inf
    with pytest.raises(NonFiniteError):
        metrics.linear_predictivity(Xn, Y)
    # A constant predictor predicts the training means: finite, no NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = metrics.linear_predictivity(np.ones((30, 3)), Y)
    assert math.isfinite(v) and -1.0 <= v <= 1.0
    # Constant target neurons are left out: adding one changes nothing.
    Yc = np.concatenate([Y, np.full((30, 1), 2.5)], 1)
    assert metrics.linear_predictivity(X, Yc, average="mean") == pytest.approx(
        metrics.linear_predictivity(X, Y, average="mean"), abs=1e-12
    )


def test_registry_pairwise_and_compare():
    m = metrics.metric("linear_predictivity", folds=3)
    assert m.invariance == "signed_permutation" and m.value_range == (-1.0, 1.0)
    assert not m.streaming
    sets = [{"a": relu_features((30, 5), 10 + i) + relu_features((30, 5), 0)} for i in range(3)]
    res = metrics.pairwise(sets, m, progress=False)
    got = res.matrix("a", "a")
    for i in range(3):
        for j in range(3):
            assert got[i, j] == pytest.approx(m(sets[i]["a"], sets[j]["a"]), abs=1e-12)
    assert got[0, 1] != pytest.approx(got[1, 0], abs=1e-6)  # asymmetric, both orders computed
