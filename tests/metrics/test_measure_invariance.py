"""The invariance table of the similarity measures (issue 25), proven with group elements.

For every measure (and every option that changes its group): sampled elements of its declared family
leave it unchanged (float32 and float64, dense, conv and token layouts), and sampled elements of each
next larger family (``family(...).larger()``) change it, so the declaration is tight. GL has no larger
family: measures declared GL-invariant are shown to change under an elementwise nonlinearity instead
(they are not constant). Also: values lie in the declared range and do not depend on the scale of the
inputs.
"""

import math

import pytest
import torch

from intertwiner import metrics
from intertwiner.groups import FAMILIES, family
from intertwiner.testing import assert_invariant, assert_not_invariant

# (spec, options): k = 5 so that the token fixture (N = 10) has enough inputs for k-NN.
TABLE = [
    ("cca", {}),
    ("cca_yanai", {}),
    # SVCCA's truncation must drop directions for it to differ from CCA (few neurons here).
    ("svcca", {"variance": 0.9}),
    ("svcca", {"dims": 3}),
    ("svcca", {"variance": 1.0}),
    ("pwcca", {}),
    ("linear_regression", {}),
    ("linear_regression", {"direction": "both"}),
    ("linear_regression", {"average": "uniform"}),
    ("linear_predictivity", {}),
    ("linear_predictivity", {"average": "mean", "folds": 3}),
    ("rsa", {}),
    ("rsa", {"rdm": "euclidean"}),
    ("rsa", {"rdm": "cosine", "compare": "pearson"}),
    ("mutual_knn", {"k": 5}),
    ("knn_jaccard", {"k": 5}),
    ("cknna", {"k": 5}),
    ("shape_distance", {}),
    ("shape_distance", {"alpha": 0.0}),
    ("shape_distance", {"alpha": 0.5, "score": "euclidean"}),
    ("shape_distance", {"group": "positive_monomial"}),
    ("shape_distance", {"group": "permutation", "alpha": 0.5}),
    ("soft_matching_distance", {}),
    # deterministic features: Gaussians with zero covariance (alpha < 2 sees their means)
    ("stochastic_shape_distance", {}),
    ("stochastic_shape_distance", {"alpha": 0.5}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in o.items()) for name, o in TABLE]

# The declared family per row: the README's measure x group table says the same. Every measure is
# scale free and invariant to permutations, so one declared invariant to permutations only is
# invariant to ``c P`` (scaled_permutation), its largest family.
DECLARED = {
    "cca": "general_linear",
    "cca_yanai": "general_linear",
    "svcca-variance=0.9": "orthogonal",
    "svcca-dims=3": "orthogonal",
    "svcca-variance=1.0": "general_linear",
    "pwcca": "signed_permutation",
    "linear_regression": "orthogonal",
    "linear_regression-direction=both": "orthogonal",
    "linear_regression-average=uniform": "monomial",
    "linear_predictivity": "signed_permutation",
    "linear_predictivity-average=mean-folds=3": "signed_permutation",
    "rsa": "scaled_permutation",
    "rsa-rdm=euclidean": "orthogonal",
    "rsa-rdm=cosine-compare=pearson": "orthogonal",
    "mutual_knn-k=5": "orthogonal",
    "knn_jaccard-k=5": "orthogonal",
    "cknna-k=5": "orthogonal",
    "shape_distance": "orthogonal",
    "shape_distance-alpha=0.0": "general_linear",
    "shape_distance-alpha=0.5-score=euclidean": "orthogonal",
    "shape_distance-group=positive_monomial": "positive_monomial",
    "shape_distance-group=permutation-alpha=0.5": "scaled_permutation",
    "soft_matching_distance": "scaled_permutation",
    "stochastic_shape_distance": "orthogonal",
    "stochastic_shape_distance-alpha=0.5": "orthogonal",
}


def _metric(name, options):
    return metrics.metric(name, **options)


@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_declared_family(name, options):
    row = name + "".join(f"-{k}={v}" for k, v in options.items())
    m = _metric(name, options)
    assert m.invariance == DECLARED[row]
    # the declared family's subgroups and c P, smallest first (FAMILIES' order)
    expected = {f.name for f in family(DECLARED[row]).subgroups()} | {"scaled_permutation"}
    assert set(m.invariant_to) == expected
    assert list(m.invariant_to) == [f for f in FAMILIES if f in expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_invariant_to_declared_family(name, options, dtype, layout_pair):
    _, x, y = layout_pair
    m = _metric(name, options)
    assert_invariant(m, m.invariance, x, y, dtype=dtype, n_samples=2, generator=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_changes_under_next_larger_family(name, options, dtype, layout_pair):
    _, x, y = layout_pair
    m = _metric(name, options)
    larger = family(m.invariance).larger()
    for fam in larger:
        assert fam.name not in m.invariant_to
        assert_not_invariant(m, fam, x, y, dtype=dtype, n_samples=3, generator=12)
    if not larger:  # GL: no larger group; the measure still sees nonlinear changes
        ref = m(x.to(dtype), y.to(dtype))
        assert abs(m(x.to(dtype) ** 3, y.to(dtype)) - ref) > 1e-3


@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_in_range_and_scale_free(name, options, layout_pair):
    _, x, y = layout_pair
    m = _metric(name, options)
    ref = m(x, y)
    lo, hi = m.value_range
    assert math.isfinite(ref) and lo <= ref <= hi
    for sx, sy in ((1e-200, 1e150), (3.0e100, 7.0e-250)):
        assert m(x * sx, y * sy) == pytest.approx(ref, abs=1e-9)
    identical = m(x, x)
    best = (hi if math.isfinite(hi) else 1.0) if m.higher_is_similar else lo  # CKNNA: 1 at X = Y
    assert identical == pytest.approx(best, abs=1e-7)


@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_changes_under_every_family_not_declared(name, options, layout_pair):
    """The whole README table: every family outside the declared one's subgroups changes it."""
    _, x, y = layout_pair
    m = _metric(name, options)
    for fam in FAMILIES.values():
        if fam.name not in m.invariant_to:
            assert_not_invariant(m, fam, x, y, n_samples=3, generator=13)


@pytest.mark.parametrize(("name", "options"), TABLE, ids=IDS)
def test_every_measure_is_invariant_to_one_common_scale_times_a_permutation(
    name, options, layout_pair
):
    """``c P`` (``scaled_permutation``, issue 24): every measure is scale free
    (``test_in_range_and_scale_free``) and invariant to permutations, hence to ``c P``, also
    where ``c P`` is not a subgroup of the declared family (orthogonal, signed permutations),
    and ``invariant_to`` says so."""
    _, x, y = layout_pair
    m = _metric(name, options)
    assert "scaled_permutation" in m.invariant_to
    assert_invariant(m, "scaled_permutation", x, y, n_samples=2, generator=14)
