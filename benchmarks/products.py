"""The product kernels against torch's and numpy's BLAS (not a test). Prints a table and says
which ``INTERTWINER_BLAS`` setting is faster on this machine.

For a Gram matrix X Y' (2,000 x 4,096) and a covariance X'Y (10,000 x 512), float64 and float32:
torch's ``@``, numpy's ``@`` (its OpenBLAS), the symmetric products X X' / X'X (numpy's syrk) and
``intertwiner._products`` (``matmul`` for the general product, ``gram``/``cov`` for the symmetric
one). Best of ``--repeat`` wall times, the runs interleaved, ``--threads`` threads for both
libraries (numpy's BLAS follows torch's count inside ``_products``; here it is set for both).

Run: ``python benchmarks/products.py [--threads 1] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from threadpoolctl import threadpool_limits

from intertwiner import _products as products

SHAPES = {
    "gram X Y' 2,000 x 4,096": (2_000, 4_096, "gram"),
    "cov X'Y 10,000 x 512": (10_000, 512, "cov"),
}


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time of each function, the functions run in turn ``repeat`` times."""
    times: dict[str, float] = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t)
    return times


def row(n: int, p: int, kind: str, dtype: torch.dtype, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, p, generator=g, dtype=dtype), torch.randn(n, p, generator=g, dtype=dtype)
    xn, yn = x.numpy(), y.numpy()
    if kind == "gram":
        fns = {
            "torch @": lambda: x @ y.T,
            "numpy @": lambda: xn @ yn.T,
            "numpy sym": lambda: xn @ xn.T,
            "ours general": lambda: products.matmul(x, y.T),
            "ours sym": lambda: products.gram(x),
        }
    else:
        fns = {
            "torch @": lambda: x.T @ y,
            "numpy @": lambda: xn.T @ yn,
            "numpy sym": lambda: xn.T @ xn,
            "ours general": lambda: products.matmul(x.T, y),
            "ours sym": lambda: products.cov(x),
        }
    return best_of(fns, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"INTERTWINER_BLAS={products.backend()}; best of {args.repeat}, seconds")  # fmt: skip
    cols = ["torch @", "numpy @", "numpy sym", "ours general", "ours sym"]
    print(f"{'product':28s} {'dtype':8s} " + " ".join(f"{c:>12s}" for c in cols))
    wins = {"torch": 0.0, "numpy": 0.0}
    with threadpool_limits(args.threads):
        for label, (n, p, kind) in SHAPES.items():
            for dtype in (torch.float64, torch.float32):
                t = row(n, p, kind, dtype, args.repeat)
                wins["torch"] += t["torch @"]
                wins["numpy"] += t["numpy @"]
                print(f"{label:28s} {str(dtype)[6:]:8s} " + " ".join(f"{t[c]:12.3f}" for c in cols))
    faster = min(wins, key=wins.__getitem__)
    print(f"general products: torch {wins['torch']:.3f} s, numpy {wins['numpy']:.3f} s in all; "
          f"faster here: {faster} (INTERTWINER_BLAS={faster}; default numpy). Symmetric "
          "products use numpy's syrk under the numpy setting.")  # fmt: skip


if __name__ == "__main__":
    main()
