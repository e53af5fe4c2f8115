"""Speed and memory of the representation metrics (not a test). Prints tables and ratios.

1. Procrustes variants on N = 10,000 rows x C = 512 neurons, timed against the one X'Y product
   (float64) that each needs: the ratio should be at most 3.
2. G_ReLU-CKA on N = 10,000 conv features 64 x 8 x 8: seconds and peak extra memory (resident set
   size sampled by a thread; torch allocations are invisible to tracemalloc), memory against the
   chunk size, and the speed-up over the reference implementation's Python loop over samples
   (paper.md section 6 / section 8 item 10), re-implemented below. The loop is timed on a subset of
   n_ref inputs and extrapolated by the number of (i, j) pairs, since its cost is one O(j C h w)
   product per row i; both implementations are also timed on that same subset.

Run: ``python benchmarks/metrics.py [--quick]``. Procrustes: minima of 5 runs, wall and process
CPU time (CPU time is less sensitive to other jobs on a shared machine); the rest: single runs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from intertwiner.metrics import group_cka, procrustes_distance, procrustes_similarity
from intertwiner.metrics.cka import hsic1_from_terms


def timed(fn, repeat: int = 3) -> float:
    """Minimum wall-clock seconds."""
    return timed2(fn, repeat)[0]


def timed2(fn, repeat: int = 5) -> tuple[float, float]:
    """(minimum wall seconds, minimum process CPU seconds): minima resist a shared machine."""
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every 2 ms (Linux)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def procrustes_table(n: int, c: int, repeat: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g, dtype=torch.float64).relu()
    y = (x @ torch.randn(c, c, generator=g, dtype=torch.float64) / c**0.5).relu()
    base, base_cpu = timed2(lambda: x.T @ y, repeat)
    print(
        f"\nProcrustes, N = {n}, C = {c}, float64 inputs; X'Y alone: {base:.3f} s wall, "
        f"{base_cpu:.3f} s CPU (minima of {repeat})"
    )
    print(f"{'metric':46s} {'wall s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s}")
    rows = [
        (f"procrustes_distance[{grp}]", lambda grp=grp: procrustes_distance(x, y, group=grp))
        for grp in (
            "orthogonal",
            "permutation",
            "signed_permutation",
            "positive_monomial",
            "monomial",
        )
    ] + [
        (
            "procrustes_similarity[positive_monomial]",
            lambda: procrustes_similarity(x, y, group="positive_monomial"),
        ),
    ]
    xf, yf = x.float(), y.float()
    rows.append(
        (
            "procrustes_distance[positive_monomial] f32 in",
            lambda: procrustes_distance(xf, yf, group="positive_monomial"),
        )
    )
    for name, fn in rows:
        t, tc = timed2(fn, repeat)
        print(f"{name:46s} {t:7.3f} {t / base:6.2f} {tc:7.3f} {tc / base_cpu:6.2f}")


def preprocess_reference(h: torch.Tensor) -> torch.Tensor:
    """Centre and unit-normalise each channel over (N, h, w), as the reference does."""
    h = h.double()
    h = h - h.mean(dim=(0, 2, 3), keepdim=True)
    return h / torch.linalg.vector_norm(h, dim=(0, 2, 3), keepdim=True)


def reference_kernel(h: torch.Tensor) -> torch.Tensor:
    """The reference loop: row i against rows j < i, one O(j C h w) product each, then max_c."""
    n = h.shape[0]
    k = torch.zeros(n, n, dtype=h.dtype)
    for i in range(1, n):
        row = (h[i : i + 1] * h[:i]).sum(dim=(2, 3)).amax(dim=1)
        k[i, :i] = row
        k[:i, i] = row
    return k


def reference_g_relu_cka(h1: torch.Tensor, h2: torch.Tensor) -> float:
    k, l = reference_kernel(preprocess_reference(h1)), reference_kernel(preprocess_reference(h2))
    n = k.shape[0]

    def hsic(a, b):
        return float(hsic1_from_terms((a * b).sum(), a.sum(), b.sum(), a.sum(1) @ b.sum(1), n))

    return hsic(k, l) / (hsic(k, k) * hsic(l, l)) ** 0.5


def group_cka_table(n: int, n_ref: int) -> None:
    g = torch.Generator().manual_seed(1)
    h1 = torch.randn(n, 64, 8, 8, generator=g).relu()  # float32, as captured
    h2 = (h1 + torch.randn(n, 64, 8, 8, generator=g)).relu()
    mib = h1.numel() * 4 / 2**20
    print(f"\nG_ReLU-CKA, N = {n}, conv features 64 x 8 x 8 (float32 inputs, {mib:.0f} MiB each)")
    print(f"{'variant':40s} {'seconds':>8s} {'peak extra MiB':>15s} {'value':>10s}")
    for label, kw in [
        ("float64 products, default chunks", {}),
        ("float32 products, default chunks", {"dtype": torch.float32}),
    ]:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            v = group_cka(h1, h2, **kw)
            t = time.perf_counter() - t0
        print(f"{label:40s} {t:8.2f} {mem.extra_mib:15.0f} {v:10.6f}")

    small = min(n, 3000)
    print(
        f"\nmemory against chunk size (N = {small}; features alone: "
        f"{2 * small * 64 * 64 * 8 / 2**20:.0f} MiB as float64)"
    )
    for chunk in (64, 256, 1024):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            group_cka(h1[:small], h2[:small], chunk_size=chunk)
            t = time.perf_counter() - t0
        print(f"chunk_size = {chunk:5d}: {t:7.2f} s, peak extra {mem.extra_mib:6.0f} MiB")

    a, b = h1[:n_ref], h2[:n_ref]
    t_ref = timed(lambda: reference_g_relu_cka(a, b), 1)
    t_ours_sub = timed(lambda: group_cka(a, b), 1)
    v_ref, v_ours = reference_g_relu_cka(a, b), group_cka(a, b)
    pairs = lambda m: m * (m - 1) / 2  # noqa: E731
    t_ref_full = t_ref * pairs(n) / pairs(n_ref)
    with PeakRSS():
        t_full = timed(lambda: group_cka(h1, h2), 1)
    print(f"\nreference Python loop vs group_cka (float64); loop timed on N = {n_ref}")
    print(
        f"same subset N = {n_ref}: loop {t_ref:.2f} s, group_cka {t_ours_sub:.2f} s, "
        f"speed-up {t_ref / t_ours_sub:.1f}x, |difference| {abs(v_ref - v_ours):.1e}"
    )
    print(
        f"N = {n}: loop extrapolated {t_ref_full:.0f} s, group_cka measured {t_full:.1f} s, "
        f"speed-up {t_ref_full / t_full:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--only", choices=["procrustes", "group_cka"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 2000 if args.quick else 10_000
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.only in (None, "procrustes"):
        procrustes_table(n, 128 if args.quick else 512, repeat=5)
    if args.only in (None, "group_cka"):
        group_cka_table(n, n_ref=300 if args.quick else 1000)


if __name__ == "__main__":
    main()
