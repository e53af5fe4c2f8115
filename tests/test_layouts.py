"""intertwiner.layouts: layouts, neuron axes and the (positions, neurons) views."""

import numpy as np
import pytest
import torch

from intertwiner import layouts
from intertwiner.errors import ShapeError

SHAPES = {"dense": (5, 3), "conv": (4, 3, 2, 5), "tokens": (4, 6, 3)}


@pytest.mark.parametrize("layout", sorted(SHAPES))
def test_layout_axes_and_views(layout):
    x = torch.randn(*SHAPES[layout], dtype=torch.float64)
    assert layouts.infer(x) == layout
    assert layouts.width(x) == 3
    assert x.shape[layouts.neuron_dim(x)] == 3
    m = layouts.to_matrix(x)
    assert m.shape == (x.shape[0] * layouts.n_positions(x), 3)
    assert layouts.to_flat(x).shape == (x.shape[0], x[0].numel())
    sites = layouts.to_sites(x)
    assert torch.equal(sites.reshape(-1, 3), m)


@pytest.mark.parametrize("layout", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("samples", [1, 3, None])
def test_neuron_blocks_walk_the_matrix_in_order(layout, dtype, samples):
    x = torch.randn(*SHAPES[layout], dtype=torch.float32)
    blocks = [b.clone() for b in layouts.neuron_blocks(x, dtype=dtype, samples=samples)]
    assert all(b.dtype == dtype and b.shape[0] == 3 for b in blocks)
    assert torch.equal(torch.cat(blocks, 1).T, layouts.to_matrix(x).to(dtype))
    assert layouts.copies(x, dtype=dtype) == (layout == "conv" or dtype != torch.float32)


def test_views_do_not_copy_dense_and_tokens():
    t = torch.randn(4, 6, 3)
    (block,) = layouts.neuron_blocks(t, samples=4)
    assert block.data_ptr() == t.data_ptr()


def test_bad_layouts_and_numpy():
    assert layouts.to_matrix(np.ones((3, 2))).shape == (3, 2)
    with pytest.raises(ShapeError, match="unknown layout"):
        layouts.infer(torch.ones(2, 3), "image")
    with pytest.raises(ShapeError, match="needs a 4-d"):
        layouts.infer(torch.ones(2, 3), "conv")
    with pytest.raises(ShapeError, match="Flatten"):
        layouts.to_matrix(torch.ones(2, 3, 4, 5, 6))


def test_features_no_longer_imports_metrics():
    import subprocess
    import sys

    code = "import sys, intertwiner.features; print('intertwiner.metrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
