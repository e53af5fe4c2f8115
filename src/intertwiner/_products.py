"""Large matrix products on the fastest kernels this machine has: the one home of every big
product that a metric, a moment accumulator or a solver forms.

On the CPU, for float32 and float64 tensors that need no gradient:

- symmetric products, ``gram(x) = x x'`` and ``cov(x) = x' x``, run as BLAS's symmetric rank-k
  update (numpy recognises ``a @ a.T`` and calls syrk: half the multiply-adds of a general
  product, the other triangle mirrored);
- general products, ``matmul(a, b)``, run on numpy's BLAS (OpenBLAS in numpy's wheels: 1-2x
  faster than torch's MKL on AMD processors, where MKL takes slow paths) or on torch's when the
  environment variable ``INTERTWINER_BLAS=torch`` says so (``python benchmarks/products.py``
  measures both here and says which to use). The choice is a setting, never a timing race: a
  job's numbers must not depend on which library won a measurement in its process.

numpy's BLAS runs with torch's current thread count, so a job's thread setting governs both
libraries (and results stay a function of it). Arrays cross between torch and numpy without
copies. Products under ``SMALL`` multiply-adds, GPU tensors, other dtypes and tensors that need
gradients use torch's own kernels. Results are torch tensors of the inputs' dtype and device.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch

from intertwiner.errors import InvalidOptionError

#: Values of ``INTERTWINER_BLAS``: the library of general CPU products (default numpy).
BACKENDS = ("numpy", "torch")
_FAST_DTYPES = (torch.float32, torch.float64)
#: Below this many multiply-adds a product costs less than crossing into numpy and back.
SMALL = 32_768


def _on_numpy_blas(*ts: torch.Tensor) -> bool:
    """Whether the tensors can go to numpy's BLAS: CPU, float32/float64, no autograd."""
    t0 = ts[0]
    return all(
        t.device.type == "cpu" and t.dtype == t0.dtype and not t.requires_grad for t in ts
    ) and (t0.dtype in _FAST_DTYPES)


@cache
def _openblas_controllers() -> tuple:
    """threadpoolctl handles of the OpenBLAS libraries numpy and scipy loaded (may be empty)."""
    import scipy.linalg  # noqa: F401  (load scipy's BLAS too, so its threads are set with numpy's)
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(internal_api="openblas").lib_controllers)


_threads_set: list[int] = [0]  # numpy's BLAS thread count as last set here


def _sync_threads() -> None:
    """Give numpy's BLAS torch's thread count (cheap: a call only when the count changed)."""
    n = torch.get_num_threads()
    if _threads_set[0] != n:
        for lib in _openblas_controllers():
            lib.set_num_threads(n)
        _threads_set[0] = n


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _run(product) -> torch.Tensor:
    """A numpy product with torch's thread count, as a tensor (no copy). NaN/Inf propagate
    silently, as in torch: callers check their inputs."""
    _sync_threads()
    with np.errstate(all="ignore"):
        return torch.from_numpy(product())


def backend() -> str:
    """``INTERTWINER_BLAS`` (default "numpy"): the library of general CPU products. Raises
    InvalidOptionError for another value."""
    value = os.environ.get("INTERTWINER_BLAS", "numpy").strip().lower() or "numpy"
    if value not in BACKENDS:
        raise InvalidOptionError(
            f"INTERTWINER_BLAS={value!r} is not one of {', '.join(BACKENDS)}; unset it for "
            "numpy's BLAS, or run benchmarks/products.py to see which is faster here"
        )
    return value


def _numpy_product(*ts: torch.Tensor, flops: int) -> bool:
    """Whether a product of ``ts`` of ``flops`` multiply-adds goes to numpy's BLAS."""
    return flops >= SMALL and _on_numpy_blas(*ts) and backend() == "numpy"


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T`` for ``x`` (n, p): the (n, n) Gram matrix, by a symmetric rank-k update."""
    n, p = x.shape
    if not _numpy_product(x, flops=n * n * p // 2):
        return x @ x.T
    xn = _np(x)
    return _run(lambda: xn @ xn.T)


def cov(x: torch.Tensor) -> torch.Tensor:
    """``x.T @ x`` for ``x`` (n, p): the (p, p) second-moment matrix, by a symmetric rank-k update."""
    n, p = x.shape
    if not _numpy_product(x, flops=n * p * p // 2):
        return x.T @ x
    xn = _np(x)
    return _run(lambda: xn.T @ xn)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` (m, k) and ``b`` (k, n) on the faster BLAS here. Transposed views
    are passed as BLAS transposes, not copied. ``a is b.T`` (the same storage) is symmetric:
    :func:`gram`/:func:`cov` handle it at half the cost."""
    if a.dim() != 2 or b.dim() != 2 or not _numpy_product(a, b, flops=_flops(a, b)):
        return a @ b
    an, bn = _np(a), _np(b)
    return _run(lambda: an @ bn)


def add_matmul_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out += a @ b`` in place (a moment accumulator's update); returns ``out``."""
    if not _numpy_product(out, a, b, flops=_flops(a, b)):
        return out.addmm_(a, b)
    an, bn = _np(a), _np(b)
    out += _run(lambda: an @ bn)
    return out


def add_cov_(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out += x.T @ x`` in place, by a symmetric rank-k update; returns ``out``."""
    n, p = x.shape
    if not _numpy_product(out, x, flops=n * p * p // 2):
        return out.addmm_(x.T, x)
    xn = _np(x)
    out += _run(lambda: xn.T @ xn)
    return out


#: Inputs per neuron-major block of ``positions_product``: small enough that both sides' copies
#: stay in cache while the product reads them (measured: 4-8 conv inputs of 64 x 64
#: float64 ran at the ready-made product's speed, 32 and more 20-40% slower).
POSITION_BLOCK_BYTES = 1 << 17


def positions_product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """``sum_n x[n] @ y[n].T`` for ``x`` (N, C_x, S) and ``y`` (N, C_y, S): the (C_x, C_y)
    product over all N * S positions of channel-major features (conv maps flattened), without a
    channels-last copy of the whole tensor. Blocks of inputs are copied neuron-major, (C, n S),
    into two buffers that stay in cache, and multiplied there on numpy's BLAS. None when the
    tensors do not go to numpy's BLAS (GPU, autograd, other dtypes, ``INTERTWINER_BLAS=torch``):
    the caller then uses torch's kernels."""
    n, cx, s = x.shape
    cy = y.shape[1]
    if not _numpy_product(x, y, flops=n * s * cx * cy):
        return None
    xn, yn = _np(x), _np(y)
    step = max(1, POSITION_BLOCK_BYTES // (max(cx, cy) * s * x.element_size()))
    out = np.zeros((cx, cy), dtype=xn.dtype)
    part = np.empty_like(out)
    bx = np.empty((cx, min(step, n), s), dtype=xn.dtype)
    by = np.empty((cy, min(step, n), s), dtype=yn.dtype)

    def run() -> np.ndarray:
        for i in range(0, n, step):
            k = min(step, n - i)
            a, b = bx[:, :k], by[:, :k]
            np.copyto(a, xn[i : i + k].transpose(1, 0, 2))
            np.copyto(b, yn[i : i + k].transpose(1, 0, 2))
            np.matmul(a.reshape(cx, -1), b.reshape(cy, -1).T, out=part)
            np.add(out, part, out=out)
        return out

    return _run(run)


def channel_squares(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of squares of ``x`` (N, C, S) over inputs and positions: (C,), in one
    streaming pass (numpy's einsum loop; torch's reduction over the two outer axes is 3-6x
    slower). Same dtype as ``x``."""
    if _on_numpy_blas(x) and backend() == "numpy":
        xn = _np(x)
        return _run(lambda: np.einsum("ncs,ncs->c", xn, xn))
    return x.square().sum((0, 2))


def _flops(a: torch.Tensor, b: torch.Tensor) -> int:
    """Multiply-adds of the 2-D product ``a @ b``."""
    return a.shape[0] * a.shape[1] * b.shape[1]


__all__ = [
    "BACKENDS",
    "SMALL",
    "add_cov_",
    "add_matmul_",
    "backend",
    "channel_squares",
    "cov",
    "gram",
    "matmul",
    "positions_product",
]
