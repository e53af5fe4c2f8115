"""interpolate / lerp / reset_bn_statistics / merge."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import build_zoo

from intertwiner.alignment import (
    align,
    interpolate,
    lerp,
    merge,
    plot_curves,
    reset_bn_statistics,
    weight_distance,
)
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.training import evaluate


def _labelled(x: torch.Tensor, n: int = 64):
    gen = torch.Generator().manual_seed(11)
    xs = torch.randn(n, *x.shape[1:], generator=gen, dtype=x.dtype)
    ys = torch.randint(0, 10, (n,), generator=gen)
    return torch.utils.data.TensorDataset(xs, ys)


def test_lerp_endpoints_and_midpoint():
    a, _ = build_zoo("myrtle_cnn", "relu", seed=0)
    b, _ = build_zoo("myrtle_cnn", "relu", seed=1)
    assert weight_distance(a, lerp(a, b, 0.0)) == 0.0
    assert weight_distance(b, lerp(a, b, 1.0)) == 0.0
    mid = lerp(a, b, 0.5)
    for (k, ta), tb, tm in zip(
        a.state_dict().items(), b.state_dict().values(), mid.state_dict().values(), strict=True
    ):
        if torch.is_floating_point(ta):
            assert torch.allclose(tm, (ta + tb) / 2), k


def test_interpolate_endpoints_match_evaluate_and_barrier_definition():
    a, x = build_zoo("mlp", "relu", seed=0)
    b, _ = build_zoo("mlp", "relu", seed=1)
    data = _labelled(x)
    curve = interpolate(a, b, 5, data)
    assert curve.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.losses[0] == pytest.approx(evaluate(a, data)["loss"])
    assert curve.losses[-1] == pytest.approx(evaluate(b, data)["loss"])
    expect = max(
        loss - ((1 - t) * curve.losses[0] + t * curve.losses[-1])
        for t, loss in zip(curve.alphas, curve.losses, strict=True)
    )
    assert curve.barrier == pytest.approx(expect)
    assert curve.barrier >= 0.0
    assert not curve.reset_bn  # no BatchNorm in the MLP
    assert curve.midpoint["alpha"] == 0.5
    d = curve.to_dict()
    assert d["barrier"] == curve.barrier and len(d["losses"]) == 5


def test_reset_bn_statistics_matches_batch_moments():
    model, x = build_zoo("myrtle_cnn", "relu")
    bn = model.block1.bn
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
        h = model.block1.conv(x)
    reset_bn_statistics(model, x)
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)))
    assert torch.allclose(bn.running_var, h.var(dim=(0, 2, 3), unbiased=True))
    assert not model.training and bn.momentum == 0.1


def test_aligned_copy_has_no_barrier_and_bn_reset_removes_spurious_one():
    """A and a transformed copy of itself: after alignment the line is constant (no barrier)."""
    a, x = build_zoo("resnet20", "relu")
    spec = trace(a, x)
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(2)))
    data = _labelled(x, 32)
    aligned = align(a, b, spec=spec).model
    flat = interpolate(a, aligned, 3, data, reset_bn=False)
    assert flat.barrier == pytest.approx(0.0, abs=1e-9)
    raw = interpolate(a, b, 3, data, reset_bn=False)
    assert raw.barrier > flat.barrier


def test_merge_of_transformed_copies_is_the_model():
    a, x = build_zoo("myrtle_cnn", "tanh")
    spec = trace(a, x)
    copies = [
        apply(a, spec, random_elements(spec, torch.Generator().manual_seed(s))) for s in (1, 2)
    ]
    merged = merge([a, *copies], spec=spec)
    assert weight_distance(a, merged) < 1e-9
    naive = merge([a, *copies], method=None)
    assert weight_distance(a, naive) > 1e-2
    with pytest.raises(ValueError):
        merge([a, a], weights=[1.0])


def test_plot_curves(tmp_path):
    a, x = build_zoo("mlp", "relu", seed=0)
    b, _ = build_zoo("mlp", "relu", seed=1)
    curve = interpolate(a, b, 3, _labelled(x), label="none")
    path = tmp_path / "barrier.png"
    plot_curves([curve], path)
    assert path.stat().st_size > 1000
