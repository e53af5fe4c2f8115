"""A metric is one object: a toy metric registered from this one module (one ``register`` call)
is known to ``metric``, streams, and is handled by ``pairwise``, ``compare`` and the invariance
checks, with no edit anywhere else."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from intertwiner.errors import InvalidOptionError
from intertwiner.features import capture
from intertwiner.layouts import to_flat
from intertwiner.metrics import (
    Accumulator,
    Measure,
    Metric,
    compare,
    metric,
    pairwise,
    register,
    unregister,
)
from intertwiner.metrics._metric import Prepared
from intertwiner.metrics._prep import validate
from intertwiner.testing import assert_invariant

from .conftest import relu_features


def norm_ratio(X, Y) -> float:
    """min/max of the Frobenius norms: in [0, 1], invariant to orthogonal maps of either side."""
    nx = float(torch.linalg.vector_norm(torch.as_tensor(X, dtype=torch.float64)))
    ny = float(torch.linalg.vector_norm(torch.as_tensor(Y, dtype=torch.float64)))
    return min(nx, ny) / max(nx, ny)


class NormRatioStream(Accumulator):
    def _new_state(self):
        return SimpleNamespace(n=0, sx=0.0, sy=0.0)

    def update(self, X, Y) -> None:
        x, y = to_flat(validate(X, "X")), to_flat(validate(Y, "Y"))
        self._state.n += x.shape[0]
        self._state.sx += float((x.double() ** 2).sum())
        self._state.sy += float((y.double() ** 2).sum())

    def compute(self) -> float:
        a, b = self._state.sx**0.5, self._state.sy**0.5
        return min(a, b) / max(a, b)


class NormRatio(Measure):
    names = ("toy_norm_ratio",)
    prepared = 0  # the hook this test installs: prepare counts its calls

    def bind(self, name, options):
        return Metric(
            "toy_norm_ratio", norm_ratio, options, ("permutation", "orthogonal"),
            make_accumulator=NormRatioStream, measure=self,
        )  # fmt: skip

    def prepare(self, m, x, layer):
        NormRatio.prepared += 1
        t = validate(x, layer)
        return Prepared(t, {"norm": float(torch.linalg.vector_norm(t.double()))})

    def pair(self, m, a, b):
        na, nb = a.extra["norm"], b.extra["norm"]
        return min(na, nb) / max(na, nb)


@pytest.fixture
def toy():
    measure = register(NormRatio())
    NormRatio.prepared = 0
    yield measure
    unregister(measure)


def test_registered_metric_is_known_and_unregistered_is_not(toy):
    m = metric("toy_norm_ratio")
    assert m.name == "toy_norm_ratio" and m.measure is toy and m.streaming
    assert m.value_range == (0.0, 1.0) and m.higher_is_similar and m.invariance == "orthogonal"
    x, y = relu_features((30, 5), 0), relu_features((30, 7), 1)
    assert m(x, y) == pytest.approx(norm_ratio(x, y))
    with pytest.raises(InvalidOptionError):
        register(NormRatio())  # the name is taken
    unregister(toy)
    with pytest.raises(InvalidOptionError, match="unknown metric"):
        metric("toy_norm_ratio")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_toy_streams_and_is_invariant(toy, dtype):
    x, y = relu_features((40, 6), 2).to(dtype), relu_features((40, 4), 3).to(dtype)
    acc = metric("toy_norm_ratio").accumulator()
    for i in range(0, 40, 7):
        acc.update(x[i : i + 7], y[i : i + 7])
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert acc.compute() == pytest.approx(norm_ratio(x, y), rel=tol)
    assert_invariant("toy_norm_ratio", "orthogonal", x, y, dtype=dtype)


def test_pairwise_prepares_each_model_once_through_the_measure(toy):
    sets = [relu_features((20, 3 + i), 10 + i) for i in range(4)]
    res = pairwise(sets, "toy_norm_ratio", progress=False)
    assert NormRatio.prepared == 4  # one preparation per model, not per pair
    for i in range(4):
        for j in range(4):
            assert res.matrix()[i, j] == pytest.approx(norm_ratio(sets[i], sets[j]), rel=1e-12)
    assert res.metric == "toy_norm_ratio" and res.value_range == (0.0, 1.0)


def test_compare_streams_the_toy_beside_cka(toy):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU())
    b = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU())
    data = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    layers = ["1", "3"]
    res = compare(a, b, data, layers, layers, ["cka", "toy_norm_ratio"], progress=False,
                  batch_size=16)  # fmt: skip
    fa, fb = capture(a, data, layers), capture(b, data, layers)
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers):
            got = res.matrices["toy_norm_ratio"][i, j]
            assert got == pytest.approx(norm_ratio(fa[la], fb[lb]), rel=1e-10)
    assert res.higher_is_similar["toy_norm_ratio"] is True
