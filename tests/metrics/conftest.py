"""Shared feature fixtures for the metric tests: small, seeded, in every layout."""

import pytest
import torch


def relu_features(shape, seed):
    """ReLU-like features with dead neurons' worth of zeros and distinct neuron scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return (x + 0.3).relu()


# (N, C), conv (N, C, H, W), tokens (N, T, D); Y has a different width to exercise zero-padding.
LAYOUT_SHAPES = {
    "dense": ((48, 7), (48, 6)),
    "conv": ((12, 5, 3, 3), (12, 4, 3, 3)),
    "tokens": ((10, 4, 6), (10, 4, 5)),
}


@pytest.fixture(params=sorted(LAYOUT_SHAPES))
def layout_pair(request):
    """(layout name, X, Y) with X, Y of different widths, correlated through a shared part."""
    sx, sy = LAYOUT_SHAPES[request.param]
    x = relu_features(sx, 0)
    y = relu_features(sy, 1)
    # Correlate Y with X so metrics are away from their degenerate values.
    dim = 2 if request.param == "tokens" else 1
    k = min(x.shape[dim], y.shape[dim])
    y = y.clone()
    y.narrow(dim, 0, k).add_(x.narrow(dim, 0, k))
    return request.param, x, y
