"""Layouts, padding, upsampling, numpy inputs and bad inputs."""

import warnings

import numpy as np
import pytest
import torch

from intertwiner.errors import NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.metrics import (
    cka,
    group_cka,
    metric,
    procrustes_distance,
    procrustes_similarity,
    to_matrix,
)

from .conftest import relu_features


def test_to_matrix_layouts():
    x = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    m = to_matrix(x)
    assert m.shape == (40, 3)
    assert torch.equal(m[7], x[0, :, 1, 2])  # row = (image, y, x), columns = channels
    t = torch.randn(2, 4, 6)
    assert torch.equal(to_matrix(t)[5], t[1, 1])
    assert to_matrix(np.ones((3, 2))).shape == (3, 2)
    with pytest.raises(ShapeError):
        to_matrix(torch.ones(2, 3, 4, 5, 6))


def test_numpy_and_float32_inputs_agree_with_float64():
    x, y = relu_features((30, 4), 0), relu_features((30, 6), 1)
    for fn in (cka, procrustes_distance, group_cka):
        want = fn(x, y)
        assert fn(x.numpy(), y.numpy()) == pytest.approx(want, abs=1e-12)
        assert fn(x.float(), y.float()) == pytest.approx(want, abs=1e-5)


def test_zero_padding_equals_explicit_padding():
    x, y = relu_features((30, 4), 0), relu_features((30, 6), 1)
    xp = torch.cat([x, torch.zeros(30, 2, dtype=x.dtype)], 1)
    for g in ("orthogonal", "permutation", "positive_monomial", "monomial"):
        assert procrustes_similarity(x, y, group=g) == pytest.approx(
            procrustes_similarity(xp, y, group=g), abs=1e-12
        )


def test_spatial_mismatch_needs_upsample():
    x, y = relu_features((5, 3, 4, 4), 0), relu_features((5, 3, 2, 2), 1)
    with pytest.raises(ShapeError, match="upsample=True"):
        procrustes_distance(x, y)
    up = torch.nn.functional.interpolate(y, size=(4, 4), mode="nearest")
    assert procrustes_distance(x, y, upsample=True) == pytest.approx(procrustes_distance(x, up))
    with pytest.raises(ShapeError, match="integer factor"):
        procrustes_distance(x, relu_features((5, 3, 3, 3), 2), upsample=True)
    # CKA compares inputs, so different spatial sizes need nothing.
    assert 0 < cka(x, y) <= 1


def test_bad_inputs_raise_specific_errors():
    x = relu_features((6, 3), 0)
    bad = x.clone()
    bad[2, 1] = float("nan")
    for fn in (cka, procrustes_distance, group_cka):
        with pytest.raises(NonFiniteError):
            fn(bad, x)
        with pytest.raises(ShapeError):
            fn(x, x[:5])
    inf = x.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(NonFiniteError):
        procrustes_similarity(x, inf)
    with pytest.raises(TooFewSamplesError, match="at least 4"):
        cka(x[:3], x[:3], debiased=True)
    with pytest.raises(TooFewSamplesError):
        group_cka(x[:3], x[:3])
    assert np.isfinite(cka(x[:3], x[:3]))
    with pytest.raises(TypeError):
        cka([[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="unknown metric"):
        metric("nope")


def test_dead_and_constant_neurons_do_not_give_nan():
    x, y = relu_features((20, 5, 2, 2), 0), relu_features((20, 4, 2, 2), 1)
    x[:, 1] = 0.0  # a dead ReLU channel
    y[:, 2] = 3.0  # a constant channel
    for group in ("orthogonal", "permutation", "positive_monomial", "monomial"):
        assert np.isfinite(procrustes_distance(x, y, group=group))
        assert np.isfinite(procrustes_distance(x, y, group=group, center=True))
        assert np.isfinite(procrustes_similarity(x, y, group=group))
    for debiased in (False, True):
        assert np.isfinite(cka(x, y, debiased=debiased))
        assert np.isfinite(group_cka(x, y, debiased=debiased))
        assert np.isfinite(group_cka(x, y, group="permutation", debiased=debiased))


def test_all_constant_representation_warns_and_returns_zero():
    x = relu_features((10, 3), 0)
    const = torch.ones(10, 3)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert cka(x, const) == 0.0
    with pytest.warns(RuntimeWarning, match="constant"):
        assert group_cka(x, const) == 0.0
    with pytest.warns(RuntimeWarning, match="all-zero"):
        assert np.isfinite(procrustes_distance(x, torch.zeros(10, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cka(x, x)


def test_overflowing_values_are_reported():
    # Issue 17: one-shot metrics are scale-free (huge values are rescaled before squaring), so
    # overflow can only come from a streaming batch far larger than the first one.
    from intertwiner.metrics import ProcrustesDistance

    x = relu_features((10, 3), 0)
    assert procrustes_distance(x * 1e200, x) == pytest.approx(procrustes_distance(x, x), abs=1e-7)
    acc = ProcrustesDistance()
    acc.update(x, x)
    with pytest.raises(NonFiniteError, match="overflow"):
        acc.update(x * 1e200, x)


def test_intertwiner_groups_map_to_the_family_of_phi():
    from intertwiner.groups import for_activation
    from intertwiner.metrics._groups import family_name

    expect = {
        "relu": "positive_monomial",
        "tanh": "signed_permutation",
        "gelu": "permutation",
        "power2": "positive_monomial",  # phi(A) = A^2 entrywise: signs squared away
        "power3": "monomial",
        "abs": "positive_monomial",
        "rbf": "permutation",
        "identity": "general_linear",
    }
    for act, fam in expect.items():
        assert family_name(for_activation(act)) == fam
    x, y = relu_features((20, 4), 0), relu_features((20, 4), 1)
    assert procrustes_distance(x, y, group=for_activation("relu")) == procrustes_distance(
        x, y, group="positive_monomial"
    )


def test_small_scale_is_not_mistaken_for_constant():
    x, y = relu_features((30, 4), 0), relu_features((30, 5), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for debiased in (False, True):
            assert cka(x * 1e-9, y * 1e6, debiased=debiased) == pytest.approx(
                cka(x, y, debiased=debiased), rel=1e-9
            )
        assert group_cka(x * 1e-9, y) == pytest.approx(group_cka(x, y), rel=1e-9)


def test_constant_neurons_with_inexact_means_act_as_dead_neurons():
    x, y = relu_features((21, 4, 2, 2), 0), relu_features((21, 3, 2, 2), 1)
    const, dead = x.clone(), x.clone()
    const[:, 2] = 0.1  # the mean of 0.1s is not exactly 0.1 in floating point
    dead[:, 2] = 0.0
    assert group_cka(const, y) == pytest.approx(group_cka(dead, y), abs=1e-12)
    for g in ("positive_monomial", "monomial"):
        assert procrustes_distance(const, y, group=g, center=True) == pytest.approx(
            procrustes_distance(dead, y, group=g, center=True), abs=1e-12
        )
    with pytest.warns(RuntimeWarning, match="constant"):
        assert cka(torch.full((21, 3), 0.1, dtype=torch.float64), y) == 0.0
