"""orbit_distance and weight_space_pairwise: zero on an orbit, at most the naive distance,
symmetric for isometric groups, and positive between different trainings."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import build_zoo

from intertwiner.alignment import orbit_distance, weight_distance, weight_space_pairwise
from intertwiner.errors import InvalidInputError
from intertwiner.symmetry import apply, random_elements, trace


def _orbit_copy(model, x, seed):
    spec = trace(model, x)
    g = random_elements(spec, generator=torch.Generator().manual_seed(seed))
    return apply(model, spec, g), spec


@pytest.mark.parametrize(
    ("arch", "act"),
    [("mlp", "relu"), ("myrtle_cnn", "relu"), ("resnet20", "gelu"), ("resnet20", "tanh")],
)
def test_zero_on_the_orbit(arch, act):
    model, x = build_zoo(arch, act)
    moved, spec = _orbit_copy(model, x, 1)
    res = orbit_distance(model, moved, spec=spec)
    assert res.naive > 0.1 * res.norm_a  # the copy is far away before alignment
    assert res.relative <= 1e-9, res.relative
    # The element is reported: applying it to B gives the aligned copy.
    again = apply(moved, spec, res.elements, validate=False)
    assert weight_distance(model, again) <= 1e-9


@pytest.mark.parametrize("act", ["gelu", "tanh"])
def test_symmetric_and_below_naive(act):
    a, x = build_zoo("myrtle_cnn", act, seed=0)
    b, _ = build_zoo("myrtle_cnn", act, seed=1)
    ab, ba = orbit_distance(a, b, example_input=x), orbit_distance(b, a, example_input=x)
    assert ab.distance <= ab.naive and ba.distance <= ba.naive
    assert ab.distance > 0.1 * ab.naive  # different initialisations stay apart
    # Permutations act by isometries: d(a, b) = d(b, a) up to the descent's local minima.
    assert abs(ab.distance - ba.distance) <= 0.05 * ab.distance


def test_pairwise_matrix():
    a, x = build_zoo("mlp", "tanh", seed=0)
    b, _ = build_zoo("mlp", "tanh", seed=1)
    a2, _ = _orbit_copy(a, x, 2)
    d = weight_space_pairwise([a, b, a2], example_input=x)
    naive = weight_space_pairwise([a, b, a2], naive=True)
    assert torch.equal(d, d.T) and bool((torch.diagonal(d) == 0).all())
    assert float(d[0, 2]) <= 1e-9 * float(naive[0, 2])  # a and its orbit copy
    assert float(d[0, 1]) > 1e-3 and bool((d <= naive + 1e-12).all())
    with pytest.raises(InvalidInputError):
        weight_space_pairwise([])
