"""The product kernels: equal to torch's products to round-off on every route (numpy's BLAS, the
symmetric update, torch's fallback), exactly symmetric where they must be, and run with torch's
thread count."""

from __future__ import annotations

import pytest
import torch

from intertwiner import _products as products
from intertwiner.errors import InvalidOptionError

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(params=["numpy", "torch"])
def route(request, monkeypatch):
    """Every product through numpy's BLAS (even tiny ones) or through torch's."""
    monkeypatch.setenv("INTERTWINER_BLAS", request.param)
    monkeypatch.setattr(products, "SMALL", 0)
    return request.param


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = float(want.abs().max()) or 1.0
    assert float((got - want).abs().max()) <= TOL[want.dtype] * scale


def _operands(dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Contiguous, transposed and strided (sliced) views: the layouts callers pass."""
    base = torch.randn(70, 90, generator=gen, dtype=dtype)
    return {
        "contiguous": base[:, :40].contiguous(),  # (70, 40)
        "transposed": torch.randn(40, 70, generator=gen, dtype=dtype).T,  # (70, 40), F-ordered
        "sliced": base[::2, 5:45],  # (35, 40), non-unit row stride
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_products_equal_torch_and_are_exactly_symmetric(route, dtype):
    gen = torch.Generator().manual_seed(0)
    for name, x in _operands(dtype, gen).items():
        g, c = products.gram(x), products.cov(x)
        _close(g, x @ x.T)
        _close(c, x.T @ x)
        if route == "numpy":  # syrk computes one triangle and mirrors it
            assert torch.equal(g, g.T) and torch.equal(c, c.T), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 7, 41])  # one block, blocks that do not divide N, many
def test_positions_product_and_channel_squares_equal_the_channels_last_products(
    route, dtype, n, monkeypatch
):
    """sum_n x[n] y[n]' over (N, C, S) equals the product of the channels-last (N S, C)
    matrices, for C_x != C_y, a non-contiguous input and block sizes that leave a remainder."""
    monkeypatch.setattr(products, "POSITION_BLOCK_BYTES", 3 * 9 * 16 * 8)  # 3 inputs per block
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 9, 16, generator=gen, dtype=dtype)
    y = torch.randn(n, 16, 6, generator=gen, dtype=dtype).transpose(1, 2)  # (n, 6, 16) strided
    got = products.positions_product(x, y)
    want = x.transpose(1, 2).reshape(-1, 9).T @ y.transpose(1, 2).reshape(-1, 6)
    if route == "torch":
        assert got is None  # the caller's torch kernels take it
    else:
        _close(got, want)
    _close(products.channel_squares(x), (x * x).sum((0, 2)))
    _close(products.channel_squares(y), (y * y).sum((0, 2)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_general_products_and_accumulators_equal_torch(route, dtype):
    gen = torch.Generator().manual_seed(1)
    ops = _operands(dtype, gen)
    y = torch.randn(40, 30, generator=gen, dtype=dtype)
    for name, a in ops.items():
        _close(products.matmul(a, y), a @ y)
        _close(products.matmul(y.T, a.T), y.T @ a.T)
        acc = torch.randn(a.shape[0], 30, generator=gen, dtype=dtype)
        want = acc + a @ y
        assert products.add_matmul_(acc, a, y) is acc, name
        _close(acc, want)
        cov_acc = torch.randn(40, 40, generator=gen, dtype=dtype)
        want = cov_acc + a.T @ a
        products.add_cov_(cov_acc, a)
        _close(cov_acc, want)


def test_the_torch_setting_gives_torchs_own_numbers(monkeypatch):
    monkeypatch.setenv("INTERTWINER_BLAS", "torch")
    x = torch.randn(300, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(products.gram(x), x @ x.T)
    assert torch.equal(products.matmul(x.T, x), x.T @ x)


def test_numpy_route_is_deterministic_and_differs_from_torch_only_at_round_off(monkeypatch):
    monkeypatch.setenv("INTERTWINER_BLAS", "numpy")
    x = torch.randn(500, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(products.cov(x), products.cov(x))
    _close(products.cov(x), x.T @ x)


def test_a_bad_setting_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("INTERTWINER_BLAS", "mkl")
    with pytest.raises(InvalidOptionError, match="numpy, torch"):
        products.gram(torch.randn(300, 300, dtype=torch.float64))


def test_tensors_that_need_gradients_keep_them(route):
    x = torch.randn(40, 30, dtype=torch.float64, requires_grad=True)
    g = products.gram(x)
    assert g.requires_grad
    g.sum().backward()
    _close(x.grad, 2 * x.detach().sum(0).expand(40, 30))  # d/dx_ik sum(x x') = 2 sum_j x_jk


def test_numpy_blas_runs_with_torchs_thread_count(monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.setenv("INTERTWINER_BLAS", "numpy")
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            products.cov(torch.randn(400, 300, dtype=torch.float64))
            counts = {
                i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"
            }
            assert counts == {n}
    finally:
        torch.set_num_threads(before)
        products.cov(torch.randn(400, 300, dtype=torch.float64))  # back to this count


def test_reproduce_refuses_a_bad_setting_before_anything_runs(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from intertwiner.cli import app

    monkeypatch.setenv("INTERTWINER_BLAS", "mkl")
    res = CliRunner().invoke(app, ["reproduce", "--out", str(tmp_path / "r"), "--preset", "test"])
    assert res.exit_code == 2 and "INTERTWINER_BLAS" in res.output
    assert not (tmp_path / "r").exists()
