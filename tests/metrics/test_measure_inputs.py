"""The new measures on degenerate inputs (a specific error or a documented value, never NaN), their
streaming forms, and their place in the registry, ``pairwise``, ``compare`` and the CLI."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from intertwiner import metrics
from intertwiner.cli import app
from intertwiner.errors import (
    InvalidOptionError,
    NonFiniteError,
    ShapeError,
    TooFewSamplesError,
)

from .conftest import relu_features

MOMENT_MEASURES = ["cca", "cca_yanai", "svcca", "pwcca", "linear_regression", "shape_distance",
                   "soft_matching_distance"]  # fmt: skip
ALL = [*MOMENT_MEASURES, "rsa", "mutual_knn", "knn_jaccard", "cknna", "linear_predictivity",
       "stochastic_shape_distance"]  # fmt: skip


def _pair(n=60, p=6, q=5, seed=0):
    x = relu_features((n, p), seed)
    y = relu_features((n, q), seed + 1)
    y[:, :3] += x[:, :3]
    return x, y


# ---- degenerate inputs ----------------------------------------------------------------------


def test_too_few_samples_for_cca_family_and_regression():
    x, y = _pair(n=10, p=6, q=5)  # rank 6 + rank 5 > 10 - 1: spurious unit correlations
    for fn in (metrics.cca, metrics.pwcca, lambda a, b: metrics.svcca(a, b, variance=1.0)):
        with pytest.raises(TooFewSamplesError, match="more sample positions"):
            fn(x, y)
    assert 0.0 <= metrics.svcca(x, y, dims=2) <= 1.0  # reducing first is the way out
    with pytest.raises(TooFewSamplesError, match="interpolates"):
        metrics.linear_regression(relu_features((6, 8), 0) + 0.1, y[:6])


@pytest.mark.parametrize("name", ALL)
def test_every_measure_refuses_bad_inputs(name):
    m = metrics.metric(name, **({"k": 3} if "knn" in name or name == "cknna" else {}))
    x, y = _pair()
    with pytest.raises(ShapeError):
        m(x, y[:-1])
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        m(bad, y)
    with pytest.raises(TooFewSamplesError):
        m(x[:1], y[:1])
    if name not in ("shape_distance", "soft_matching_distance", "stochastic_shape_distance"):
        # two points have a shape
        with pytest.raises(TooFewSamplesError):
            m(x[:2], y[:2])


def test_rank_deficient_features_are_their_column_space():
    """A duplicated or zero neuron adds nothing: the pseudo-inverse semantics, no NaN."""
    x, y = _pair()
    wide = torch.cat([x, x[:, :2] * 3.0, torch.zeros(60, 1)], 1)
    for name in ("cca", "cca_yanai", "svcca", "linear_regression"):
        m = metrics.metric(name)
        assert m(wide, y) == pytest.approx(m(x, y), abs=1e-9)
    assert metrics.shape_distance(wide, y, 0.0) == pytest.approx(
        metrics.shape_distance(x, y, 0.0), abs=1e-9
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("cca", 0.0), ("svcca", 0.0), ("pwcca", 0.0), ("linear_regression", 0.0),
     ("shape_distance", math.pi / 2), ("soft_matching_distance", 1.0), ("rsa", 0.0),
     ("cknna", 0.0), ("linear_predictivity", 0.0), ("stochastic_shape_distance", 1.0)],
)  # fmt: skip
def test_constant_representation_warns_and_gives_documented_value(name, value):
    x, _ = _pair()
    const = torch.ones(60, 4)
    m = metrics.metric(name, **({"k": 3} if name == "cknna" else {}))
    with pytest.warns(RuntimeWarning):
        got = m(x, const)
    assert got == pytest.approx(value, abs=1e-12)


def test_soft_matching_of_two_constant_representations_is_zero():
    with pytest.warns(RuntimeWarning):
        assert metrics.soft_matching_distance(torch.ones(9, 3), torch.ones(9, 2)) == 0.0


def test_knn_refuses_bad_k_and_handles_identical_inputs():
    x, y = _pair(n=12)
    with pytest.raises(TooFewSamplesError, match="k \\+ 1"):
        metrics.mutual_knn(x, y, k=12)
    with pytest.raises(InvalidOptionError):
        metrics.mutual_knn(x, y, k=0)
    with pytest.raises(InvalidOptionError):
        metrics.cknna(x, y, k=1)
    same = torch.ones(12, 3)  # every input tied with every other
    v = metrics.mutual_knn(same, y, k=3)
    assert v == pytest.approx(3 / 11, abs=1e-12)  # each true neighbour has chance 3/11
    assert not math.isnan(metrics.knn_jaccard(same, y, k=3))


def test_knn_values_do_not_depend_on_input_order_under_ties():
    x, y = _pair(n=20)
    x = torch.round(x * 2) / 2  # coarse values: many tied similarities
    x[5] = x[6]
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    for fn in (metrics.mutual_knn, metrics.knn_jaccard, metrics.cknna):
        assert fn(x[perm], y[perm], k=4) == pytest.approx(fn(x, y, k=4), abs=1e-12)


def test_options_are_checked():
    x, y = _pair()
    with pytest.raises(InvalidOptionError):
        metrics.svcca(x, y, variance=0.0)
    with pytest.raises(InvalidOptionError):
        metrics.shape_distance(x, y, alpha=1.5)
    with pytest.raises(InvalidOptionError):
        metrics.shape_distance(x, y, group="general_linear")
    with pytest.raises(InvalidOptionError):
        metrics.rsa(x, y, rdm="manhattan")
    with pytest.raises(InvalidOptionError, match="no a group"):
        metrics.metric("cca:positive_monomial")
    with pytest.raises(InvalidOptionError, match="options"):
        metrics.metric("rsa", k=3)


def test_position_measures_need_matching_positions():
    x = relu_features((8, 3, 4, 4), 0)
    y = relu_features((8, 3, 2, 2), 1)
    with pytest.raises(ShapeError, match="upsample"):
        metrics.cca(x, y)
    assert 0.0 <= metrics.cca(x, y, upsample=True) <= 1.0
    assert -1.0 <= metrics.rsa(x, relu_features((8, 5), 2)) <= 1.0  # per input: any layouts


# ---- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MOMENT_MEASURES)
@pytest.mark.parametrize("shape", [(40, 4, 3, 3), (60, 6)])
def test_streaming_equals_one_shot(name, shape):
    x = relu_features(shape, 3)
    y = relu_features(shape, 4) + 0.5 * x
    m = metrics.metric(name)
    acc = m.accumulator()
    for i in range(0, shape[0], 7):  # uneven batches
        acc.update(x[i : i + 7], y[i : i + 7])
    assert acc.compute() == pytest.approx(m(x, y), abs=1e-10)
    assert acc.invariant_to == m.invariant_to and acc.value_range == m.value_range


def test_non_moment_measures_do_not_stream():
    for name in ("rsa", "mutual_knn", "cknna", "knn_jaccard"):
        assert not metrics.metric(name).streaming
    assert not metrics.metric("shape_distance:positive_monomial").streaming


# ---- registry, pairwise, compare, CLI -------------------------------------------------------


def test_registry_names_and_specs():
    for name in ALL + ["cca_yanai"]:
        assert name in metrics.NAMES
        fn = getattr(metrics, name, None)
        m = metrics.metric(name)
        if fn is not None:
            assert m.fn is fn and fn.invariance == m.invariance
            assert tuple(fn.value_range) == m.value_range
    m = metrics.metric("shape_distance:positive_monomial")
    assert (
        m.invariance == "positive_monomial" and m.name == "shape_distance[group=positive_monomial]"
    )
    assert metrics.metric("svcca", variance=1.0).invariance == "general_linear"


def test_pairwise_with_new_measures():
    sets = [{"a": relu_features((30, 5), 10), "b": relu_features((30, 4), 11)} for _ in range(3)]
    for i, s in enumerate(sets):
        s["a"] = s["a"] + 0.5 * relu_features((30, 5), 20 + i)
        s["b"] = s["b"] + 0.5 * relu_features((30, 4), 30 + i)
    for spec in ("svcca", "rsa", "mutual_knn", "shape_distance:positive_monomial"):
        m = metrics.metric(spec, **({"k": 5} if spec == "mutual_knn" else {}))
        res = metrics.pairwise(sets, m, progress=False)
        assert res.value_range == m.value_range
        for la in ("a", "b"):
            for lb in ("a", "b"):
                got = res.matrix(la, lb)
                for i in range(3):
                    for j in range(3):
                        want = m(sets[i][la], sets[j][lb])
                        assert got[i, j] == pytest.approx(want, abs=1e-12)


class _Tiny(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_compare_takes_new_measures():
    data = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    a, b = _Tiny(0), _Tiny(1)
    specs = ["cca", "pwcca", "rsa", "soft_matching_distance", "linear_predictivity"]
    res = metrics.compare(a, b, data, ["fc1"], ["fc1", "fc2"], specs, progress=False)
    x = torch.cat(data)
    with torch.no_grad():
        fa = a.fc1(x)
        fb = {"fc1": b.fc1(x), "fc2": b.fc2(torch.relu(b.fc1(x)))}
    for spec in specs:
        m = metrics.metric(spec)
        got = res.matrices[m.name]
        for j, lb in enumerate(("fc1", "fc2")):
            assert got[0, j] == pytest.approx(m(fa, fb[lb]), abs=1e-9)


def test_cli_compare_with_new_measures(tmp_path):
    g = np.random.default_rng(0)
    base = g.standard_normal((30, 6))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.npy")
        np.save(paths[-1], np.maximum(base + 0.5 * g.standard_normal(base.shape), 0))
    out = tmp_path / "out"
    spec = "svcca,shape_distance:positive_monomial,mutual_knn,linear_predictivity"
    r = CliRunner().invoke(app, ["compare", *map(str, paths), "--metrics", spec, "-q", "--out",
                                 str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "compare.json").read_text())
    arrays = [np.load(p) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = metrics.pairwise(arrays, "svcca", progress=False).matrix()
    assert np.allclose(np.array(saved["svcca"]["matrices"][0]["values"]), want, rtol=1e-12)
    assert "shape_distance[group=positive_monomial]" in saved
    assert "linear_predictivity" in saved
