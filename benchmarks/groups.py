"""Cost of sampling and applying group elements (issue 2).

Prints a table: sampling a monomial element of size C, applying it to an (N, C) float32 tensor
along dim 1 (gather + scale, O(N C)), and the dense alternative (building the C x C matrix and a
matmul, O(N C^2)), measured on a slice of rows and extrapolated linearly to N.

    python benchmarks/groups.py            # C = 4096, N = 100_000
    python benchmarks/groups.py --n 20000  # smaller, for a quick look
"""

from __future__ import annotations

import argparse
import time

import torch

from intertwiner.groups import for_activation


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", type=int, default=4096)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dense-rows", type=int, default=10_000)
    args = parser.parse_args()
    c, n = args.c, args.n
    group = for_activation("relu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen)

    t_sample = best_of(lambda: group.sample(c, generator=gen, dtype=torch.float32), 5)
    a = group.sample(c, generator=gen, dtype=torch.float32)
    t_apply = best_of(lambda: a.apply(x, dim=1))
    t_phi = best_of(lambda: group.phi(a).apply(x, dim=1))
    t_compose = best_of(lambda: a @ a.inverse(), 5)
    t_copy = best_of(lambda: x.clone())  # memory-bound floor: one read + one write of x

    rows = x[: args.dense_rows]
    t_dense_build = best_of(lambda: a.matrix(torch.float32))
    m = a.matrix(torch.float32)
    t_dense = best_of(lambda: rows @ m.T) * n / rows.shape[0]
    torch.testing.assert_close(a.apply(rows, dim=1), rows @ m.T)

    gbytes = x.numel() * x.element_size() / 1e9
    print(
        f"G_ReLU element, C = {c}, x: ({n}, {c}) float32 = {gbytes:.2f} GB, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'operation':44s} {'seconds':>10s}")
    print(f"{'sample (perm + log-normal scales)':44s} {t_sample:10.5f}")
    print(f"{'compose a @ a^-1 (structured)':44s} {t_compose:10.5f}")
    print(f"{'apply along dim 1 (gather + scale)':44s} {t_apply:10.3f}")
    print(f"{'phi(a).apply':44s} {t_phi:10.3f}")
    print(f"{'floor: x.clone() (one read + one write)':44s} {t_copy:10.3f}")
    print(f"{'dense: build C x C matrix':44s} {t_dense_build:10.3f}")
    print(f"{'dense: x @ A.T (extrapolated from slice)':44s} {t_dense:10.3f}")
    print(
        f"apply throughput: {x.numel() / t_apply / 1e9:.2f} G elements/s; "
        f"structured apply is {t_dense / t_apply:.0f}x faster than the dense matmul and "
        f"{t_apply / t_copy:.1f}x the cost of a plain copy"
    )


if __name__ == "__main__":
    main()
