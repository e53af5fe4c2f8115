"""Streaming accumulators equal the one-shot functions (1e-8, float64) for any batching."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intertwiner.errors import ShapeError, TooFewSamplesError
from intertwiner.metrics import (
    LinearCKA,
    ProcrustesDistance,
    ProcrustesSimilarity,
    cka,
    metric,
    procrustes_distance,
    procrustes_similarity,
)

from .conftest import relu_features

GROUPS = ["orthogonal", "permutation", "signed_permutation", "positive_monomial", "monomial"]


def batches(n, sizes):
    i = 0
    for s in sizes:
        if i >= n:
            return
        yield slice(i, min(n, i + s))
        i += s
    if i < n:
        yield slice(i, n)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 17), min_size=1, max_size=8), debiased=st.booleans())
def test_linear_cka_stream_equals_one_shot(sizes, debiased):
    x = relu_features((40, 3, 2, 2), 0) * 50 + 10  # a large offset tests the shift
    y = relu_features((40, 5), 1)
    acc = LinearCKA(debiased=debiased)
    for sl in batches(40, sizes):
        acc.update(x[sl], y[sl])
    assert acc.compute() == pytest.approx(cka(x, y, debiased=debiased), abs=1e-8)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("kind", ["angular", "euclidean"])
@pytest.mark.parametrize("center", [False, True])
def test_procrustes_stream_equals_one_shot(group, kind, center, layout_pair):
    _, x, y = layout_pair
    acc = ProcrustesDistance(group=group, kind=kind, center=center)
    sim = ProcrustesSimilarity(group=group, center=center)
    for sl in batches(x.shape[0], [3, 1, 5]):
        acc.update(x[sl], y[sl])
        sim.update(x[sl].numpy(), y[sl].numpy())  # numpy batches are accepted too
    want = procrustes_distance(x, y, group=group, kind=kind, center=center)
    assert acc.compute() == pytest.approx(want, abs=1e-8)
    want = procrustes_similarity(x, y, group=group, center=center)
    assert sim.compute() == pytest.approx(want, abs=1e-8)


def test_stream_with_upsampling_equals_one_shot():
    x, y = relu_features((10, 3, 4, 4), 2), relu_features((10, 4, 2, 2), 3)
    acc = ProcrustesSimilarity(group="positive_monomial", upsample=True)
    for sl in batches(10, [4, 4]):
        acc.update(x[sl], y[sl])
    want = procrustes_similarity(x, y, group="positive_monomial", upsample=True)
    assert acc.compute() == pytest.approx(want, abs=1e-10)


def test_reset_and_shape_checks():
    acc = LinearCKA(debiased=True)
    x, y = relu_features((8, 3), 0), relu_features((8, 2), 1)
    acc.update(x[:3], y[:3])
    with pytest.raises(TooFewSamplesError):
        acc.compute()
    with pytest.raises(ShapeError):
        acc.update(x[:, :2], y)
    acc.reset()
    acc.update(x, y)
    assert acc.compute() == pytest.approx(cka(x, y, debiased=True), abs=1e-12)
    with pytest.raises(TooFewSamplesError):
        ProcrustesDistance().compute()


def test_memory_is_independent_of_n():
    acc = ProcrustesDistance(group="positive_monomial")
    x = relu_features((64, 6), 0)
    acc.update(x, x)
    sizes = [t.numel() for t in vars(acc._state).values() if isinstance(t, torch.Tensor)]
    for _ in range(5):
        acc.update(x, x)
    assert sizes == [t.numel() for t in vars(acc._state).values() if isinstance(t, torch.Tensor)]
    assert max(sizes) == 36


def test_metric_objects_expose_matching_accumulators():
    for spec in ["cka", "cka_debiased", "procrustes_distance:monomial", "procrustes_similarity"]:
        m = metric(spec)
        assert m.streaming
        assert m.accumulator().invariant_to == m.invariant_to
    assert not metric("group_cka").streaming
    assert not metric("rbf_cka").streaming


def test_biased_stream_skips_the_debiased_terms_and_refuses_to_give_them():
    from intertwiner.errors import InvalidOptionError

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 7, generator=g), torch.randn(64, 5, generator=g)
    biased = LinearCKA()
    for i in range(0, 64, 16):
        biased.update(x[i : i + 16], y[i : i + 16])
    assert biased.compute() == pytest.approx(cka(x, y), rel=1e-12, abs=1e-14)
    assert not biased._state.vec  # the three extra passes were not made
    with pytest.raises(InvalidOptionError, match="debiased=True"):
        biased._state.cka(debiased=True)
