"""Issue 17: every metric is exactly scale-free (float64 1e-300..1e300, float32's range), stays in
its documented range (``.value_range``), and never returns NaN."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from intertwiner.groups import for_activation
from intertwiner.metrics import (
    LinearCKA,
    ProcrustesDistance,
    ProcrustesSimilarity,
    cka,
    group_cka,
    metric,
    procrustes_distance,
    procrustes_similarity,
)
from intertwiner.metrics.procrustes import GROUPS, similarity_range

from .conftest import relu_features

GROUP_CKA = ("positive_monomial", "monomial", "permutation", "signed_permutation")

# name -> (fn(X, Y), (low, high)); every metric and option combination that should be scale-free.
METRICS = {
    "cka": (lambda x, y: cka(x, y), cka.value_range),
    "cka_debiased": (lambda x, y: cka(x, y, debiased=True), (-1.0, 1.0)),
    "rbf_cka": (lambda x, y: cka(x, y, kernel="rbf"), (0.0, 1.0)),
    "rbf_cka_debiased": (lambda x, y: cka(x, y, kernel="rbf", debiased=True), (-1.0, 1.0)),
    "cka_gram": (lambda x, y: cka(x[:5], y[:5]), (0.0, 1.0)),  # N < width: the N x N form
    **{
        f"group_cka[{g}]": (lambda x, y, g=g: group_cka(x, y, group=g), group_cka.value_range)
        for g in GROUP_CKA
    },
    **{
        f"group_cka_biased[{g}]": (
            lambda x, y, g=g: group_cka(x, y, group=g, debiased=False),
            (-1.0, 1.0),
        )
        for g in GROUP_CKA
    },
    **{
        f"procrustes_distance[{g},{k}]": (
            lambda x, y, g=g, k=k: procrustes_distance(x, y, group=g, kind=k),
            (0.0, math.pi if k == "angular" else 2.0),
        )
        for g in GROUPS
        for k in ("angular", "euclidean")
    },
    **{
        f"procrustes_distance_centred[{g}]": (
            lambda x, y, g=g: procrustes_distance(x, y, group=g, center=True),
            (0.0, math.pi),
        )
        for g in GROUPS
    },
    **{
        f"procrustes_similarity[{g}]": (
            lambda x, y, g=g: procrustes_similarity(x, y, group=g),
            similarity_range(g),
        )
        for g in GROUPS
    },
    "streaming_cka": (lambda x, y: _stream(LinearCKA(), x, y), (0.0, 1.0)),
    "streaming_cka_debiased": (lambda x, y: _stream(LinearCKA(debiased=True), x, y), (-1.0, 1.0)),
    **{
        f"streaming_procrustes[{g}]": (
            lambda x, y, g=g: _stream(ProcrustesDistance(group=g, center=True), x, y),
            (0.0, math.pi),
        )
        for g in ("orthogonal", "positive_monomial")
    },
    "streaming_similarity[positive_monomial]": (
        lambda x, y: _stream(ProcrustesSimilarity(group="positive_monomial"), x, y),
        (0.0, 1.0),
    ),
}


def _stream(acc, x, y):
    for i in range(0, x.shape[0], 7):
        acc.update(x[i : i + 7], y[i : i + 7])
    return acc.compute()


@pytest.fixture(scope="module")
def pair():
    x, y = relu_features((30, 5), 0), relu_features((30, 4), 1)
    y = y.clone()
    y[:, :4] += 0.5 * x[:, :4]
    return x, y


SCALES64 = (1e-300, 1e-170, 1e-100, 1e-10, 1e160, 1e300)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_scale_free_in_float64(pair, name):
    fn, _ = METRICS[name]
    x, y = pair
    want = fn(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "constant representation" warning at any scale
        for sx in SCALES64:
            for sy in (1.0, sx, 1.0 / sx):
                got = fn(x * sx, y * sy)
                assert got == pytest.approx(want, rel=1e-10, abs=1e-12), (sx, sy, got, want)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_powers_of_two_give_bit_identical_values(pair, name):
    fn, _ = METRICS[name]
    x, y = pair
    want64, want32 = fn(x, y), fn(x.float(), y.float())
    for k in (-1000, -560, -100, 100, 560, 1000):
        assert fn(x * 2.0**k, y) == want64, k
    for k in (-100, -60, 60, 100):  # float32: 2^-100 keeps these features normal
        assert fn(x.float() * 2.0**k, y.float() * 2.0**-k) == want32, k


@pytest.mark.parametrize("name", sorted(METRICS))
def test_scale_free_across_float32_range(pair, name):
    fn, _ = METRICS[name]
    x, y = pair[0].float(), pair[1].float()
    want = fn(x, y)
    for s in (1e-30, 1e-20, 1e20, 1e30):
        # Each float32 product rounds once (relative 6e-8), so agreement is to float32 precision.
        assert fn(x * s, y * s) == pytest.approx(want, rel=1e-5, abs=1e-5), s


def test_relu_group_metrics_ignore_per_neuron_scales_of_any_size(pair):
    x, y = pair
    d = torch.tensor([1e-150, 1.0, 1e150, 3e-200, 7e100], dtype=torch.float64)
    a = for_activation("relu").sample(5, generator=torch.Generator().manual_seed(3))
    xt = a.apply(x, dim=1) * d
    for g in ("positive_monomial", "monomial"):
        assert procrustes_distance(x, xt, group=g) == pytest.approx(0.0, abs=1e-7)
        assert procrustes_similarity(x, xt, group=g) == pytest.approx(1.0, abs=1e-12)
        assert group_cka(x, xt, group=g) == pytest.approx(1.0, abs=1e-12)
        assert group_cka(x, y * 1e-250, group=g) == pytest.approx(group_cka(x, y, group=g))


def _adversarial_pairs():
    """Pairs that push metrics to their bounds: anti-correlated, centred, tiny and pure noise."""
    g = torch.Generator().manual_seed(7)
    for n, c in ((4, 1), (5, 2), (6, 3), (8, 2), (12, 5), (40, 3)):
        x = torch.randn(n, c, generator=g, dtype=torch.float64)
        y = torch.randn(n, c + 1, generator=g, dtype=torch.float64)
        yield x, y
        yield x, -x
        yield x, -x + 0.1 * torch.randn(n, c, generator=g, dtype=torch.float64)
        yield x.relu(), (-x).relu()
        yield x - x.mean(0), -(x - x.mean(0))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_values_stay_in_documented_range_and_are_never_nan(name):
    fn, (low, high) = METRICS[name]
    seen = []
    for x, y in _adversarial_pairs():
        if "debiased" in name or ("group_cka" in name and "biased" not in name):
            if x.shape[0] < 4:
                continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant columns may warn
            v = fn(x, y)
        assert not math.isnan(v)
        assert low <= v <= high, (name, tuple(x.shape), v)
        seen.append(v)
    assert seen


def test_documented_bounds_are_reached_or_crossed_where_the_issue_saw_them():
    # The estimator really is negative on noise (so the range must say so)...
    g = torch.Generator().manual_seed(1)
    vals = [
        cka(torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), debiased=True)
        for _ in range(20)
    ]
    assert min(vals) < 0 <= max(vals) <= 1
    # ...and G_ReLU Procrustes similarity reaches 0 on anti-correlated single neurons (C = 1).
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    assert procrustes_similarity(x, -x, group="positive_monomial") == 0.0
    assert procrustes_similarity(x, -x, group="monomial") == 1.0  # a sign flip undoes it
    assert procrustes_similarity(x, -x, group="orthogonal") == 1.0


def test_value_range_is_carried_by_functions_metrics_and_accumulators():
    assert cka.value_range == (0.0, 1.0)
    assert group_cka.value_range == (-1.0, 1.0)
    assert metric("cka_debiased").value_range == (-1.0, 1.0)
    assert metric("group_cka").value_range == (-1.0, 1.0)
    assert metric("procrustes_similarity:positive_monomial").value_range == (0.0, 1.0)
    lo = 1 - math.sqrt(2) / 2
    assert metric("procrustes_similarity:orthogonal").value_range == pytest.approx((lo, 1.0))
    assert metric("procrustes_distance:monomial").value_range == (0.0, math.pi)
    assert LinearCKA(debiased=True).value_range == (-1.0, 1.0)
    assert ProcrustesSimilarity(group="permutation").value_range == (0.0, 1.0)
    assert "negative" in (group_cka.__doc__ or "")
    assert "negative" in (cka.__doc__ or "")


def test_comparison_reports_each_metrics_range():
    from intertwiner.metrics import compare

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    res = compare(model, model, torch.randn(16, 4), ["1"], ["1"],
                  ["cka_debiased", "group_cka", "procrustes_similarity:positive_monomial"],
                  progress=False)  # fmt: skip
    assert res.value_range["cka_debiased"] == (-1.0, 1.0)
    assert res.value_range["group_cka[positive_monomial]"] == (-1.0, 1.0)
    assert res.to_dict()["metrics"]["procrustes_similarity[positive_monomial]"]["value_range"] == [
        0.0,
        1.0,
    ]


def test_paper_range_holds_for_relu_outputs_without_centring():
    # paper.md section 6: for ReLU outputs (>= 0, not centred) every cross-correlation is >= 0, so
    # both Procrustes distances are at most sqrt(2)/2 and the similarity is in [0.29, 1].
    g = torch.Generator().manual_seed(5)
    low = 1 - math.sqrt(2) / 2
    for n, c in ((3, 1), (4, 2), (9, 3), (30, 6)):
        for _ in range(5):
            x = torch.randn(n, c, generator=g, dtype=torch.float64).relu()
            y = torch.randn(n, c, generator=g, dtype=torch.float64).relu()
            x[0], y[1] = 1.0, 1.0  # no dead neurons
            for group in GROUPS:
                assert low - 1e-12 <= procrustes_similarity(x, y, group=group) <= 1.0


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n, p", [(400, 12), (30, 50)])  # the feature-space and the Gram form
def test_linear_cka_is_the_centred_value_for_offsets_of_any_size(debiased, n, p):
    """One-shot linear CKA centres after the products (X'X - n mu mu', or HKH of the raw Gram
    matrix) while the mean is at most MEAN_DOMINANCE times the spread, and centres a copy first
    beyond it: either way the value is the textbook one computed on explicitly centred rows of
    the same (offset) input."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = x[:, :8] @ torch.randn(8, 9, generator=gen, dtype=torch.float64)
    y = y + torch.randn(n, 9, generator=gen, dtype=torch.float64)
    if n < p:
        y = y @ torch.randn(9, p, generator=gen, dtype=torch.float64)  # wide: the Gram form

    def textbook(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(0), b - b.mean(0)
        k, l = a @ a.T, b @ b.T  # the Gram form's HSIC estimators, independent of the code's
        n = a.shape[0]
        if not debiased:
            return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))

        def hsic1(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
            k, l = k - torch.diag(k.diagonal()), l - torch.diag(l.diagonal())
            one = torch.ones(n, dtype=k.dtype)
            return (
                (k * l).sum()
                + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 * (one @ k @ l @ one) / (n - 2)
            ) / (n * (n - 3))

        return float(hsic1(k, l) / torch.sqrt(hsic1(k, k) * hsic1(l, l)))

    for offset in (0.0, 0.7, 3.0, 1e3, 1e7):  # r = n|mu|^2 / centred from 0 to about 1e14
        xo, yo = x + offset, y - 2 * offset
        assert cka(xo, yo, debiased=debiased) == pytest.approx(
            textbook(xo, yo), rel=1e-11, abs=1e-13
        ), offset
