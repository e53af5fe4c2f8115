"""Speed of the representation metrics against their floors (not a test). Prints tables and ratios.

1. Every metric on dense (10,000 x 512), conv (2,000 and 10,000 x 64 x 8 x 8) and tokens
   (2,000 x 64 x 256) float64 features, timed against its floor, the work it cannot avoid, done by
   plain torch on ready-made contiguous float64 matrices:
   - Procrustes (every group): the X'Y product over (positions, C) plus the C x C group step
     (singular values for orthogonal, linear_sum_assignment for the permutation groups);
   - two floors for each: torch's matmul ("torch fl") and the best product on the machine
     ("best fl": numpy's BLAS, symmetric products X'X / XX' by its syrk);
   - linear CKA (biased or debiased): the products of the form it uses, feature space
     (X'X, Y'Y, X'Y over the centred (N, p) matrices) or Gram (XX', YY'), whichever is cheaper;
   - streaming accumulators (batches of N/5 inputs): the floor of the same one-shot metric (linear
     CKA streams in feature space, so only where that form is the cheaper one).
   Target: ratio <= 1.2 against the best floor. Linear CKA also shows nanoseconds per input float.
   Peers, their published algorithms re-implemented here (netrep's LinearCKA and LinearMetric,
   the reference code's ortho/wreath Procrustes), timed beside ours.
2. G_ReLU-CKA (float32 products, float64 sums) on conv features 64 x 8 x 8 at N = 1,000 and 10,000:
   seconds, achieved GFLOP/s of its batched products (2 C S N (N + 1) / 2 multiply-adds per
   representation) beside the machine's best float32 matmul GFLOP/s (a 2048^3 product, torch's
   or numpy's), the ratio to that FLOP floor (target <= 2), peak extra memory, and the speed-up over the reference
   implementation's Python loop over samples (paper.md sections 6 and 8, re-implemented below;
   run in full at N = 1,000; at 10,000 estimated from 40 rows of its loop spread over [1, N), each
   row's O(i C h w) product timed at full size, scaled by (N - 1) / 40).

All timings interleave the compared runs in one process and take medians of ``--repeat`` runs of
process CPU time with one torch thread (wall time on a GPU): the machine may be shared, and CPU time
does not count the time another job holds the core. Run: ``python benchmarks/metrics.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from intertwiner import _products as products
from intertwiner.layouts import to_flat, to_matrix
from intertwiner.metrics import (
    LinearCKA,
    ProcrustesSimilarity,
    cka,
    group_cka,
    procrustes_distance,
    procrustes_similarity,
)
from intertwiner.metrics.cka import hsic1_from_terms

LAYOUTS = {
    "dense": (10_000, 512),
    "conv 2k": (2_000, 64, 8, 8),
    "conv 10k": (10_000, 64, 8, 8),
    "tokens": (2_000, 64, 256),
}
QUICK = {"dense": (2_000, 128), "conv 2k": (500, 32, 8, 8), "tokens": (500, 32, 64)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, device) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn ``repeat`` times. On the CPU
    the seconds are this process's CPU time (one thread: time spent computing, not time spent
    waiting for a core another job holds); on a GPU, wall time."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t = clock()
            fn()
            sync(device)
            times[name].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def features(shape: tuple[int, ...], device, dtype=torch.float64, seed: int = 0):
    """ReLU features X and Y = relu(X + noise): correlated, like two layers or two seeds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype).relu()
    y = (x + torch.randn(*shape, generator=g, dtype=dtype)).relu()
    return x.to(device), y.to(device)


def streamed(acc_factory, x, y, parts: int = 5) -> float:
    acc = acc_factory()
    step = -(-x.shape[0] // parts)
    for i in range(0, x.shape[0], step):
        acc.update(x[i : i + step], y[i : i + step])
    return acc.compute()


def floors(x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Callable], str]:
    """The floor functions of one layout, and the linear-CKA form. Two floors: torch's matmul
    ("product", "cka") and the best product on the machine, numpy's BLAS with symmetric products
    by syrk ("best product", "best cka")."""
    xm, ym = to_matrix(x).contiguous(), to_matrix(y).contiguous()
    m = (xm.T @ ym).cpu().numpy()
    xf, yf = to_flat(x), to_flat(y)
    xc, yc = (xf - xf.mean(0)).contiguous(), (yf - yf.mean(0)).contiguous()
    n, p = xc.shape
    # The rule of ``cka``: feature space costs N(p^2/2 + q^2/2 + pq), Gram N^2 (p + q)/2.
    form = "feature" if 4 * p * p <= 2 * n * p else "gram"
    xmn, ymn, xcn, ycn = (t.cpu().numpy() for t in (xm, ym, xc, yc))

    def cka_floor():
        if form == "feature":
            return xc.T @ xc, yc.T @ yc, xc.T @ yc
        return xc @ xc.T, yc @ yc.T

    def best_cka_floor():
        if form == "feature":
            return xcn.T @ xcn, ycn.T @ ycn, xcn.T @ ycn
        return xcn @ xcn.T, ycn @ ycn.T

    return {
        "product": lambda: xm.T @ ym,
        "best product": lambda: xmn.T @ ymn,
        "svd": lambda: torch.linalg.svdvals(torch.from_numpy(m)),
        "assignment": lambda: linear_sum_assignment(m, maximize=True),
        "cka": cka_floor,
        "best cka": best_cka_floor,
    }, form


# ---- peers, re-implemented from their published algorithms (numpy / torch as they use) --------
def netrep_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """netrep's LinearCKA.score: centre columns, then the angle between the Gram matrices
    X X' and Y Y' (numpy; X X' is syrk there too)."""
    xn, yn = to_flat(x).cpu().numpy(), to_flat(y).cpu().numpy()
    xn, yn = xn - xn.mean(0), yn - yn.mean(0)
    k, l = xn @ xn.T, yn @ yn.T
    return float(np.arccos(np.clip(np.vdot(k, l) / (np.linalg.norm(k) * np.linalg.norm(l)), -1, 1)))


def netrep_procrustes(x: torch.Tensor, y: torch.Tensor) -> float:
    """netrep's LinearMetric(alpha=1).fit_score (orthogonal Procrustes, angular score): centre,
    SVD of X'Y, rotate both sides into the shared frame, the angle between them (numpy)."""
    xn, yn = to_matrix(x).cpu().numpy(), to_matrix(y).cpu().numpy()
    xn, yn = xn - xn.mean(0), yn - yn.mean(0)
    u, _, vt = np.linalg.svd(xn.T @ yn, full_matrices=False)
    xw, yw = xn @ u, yn @ vt.T
    cos = np.vdot(xw, yw) / (np.linalg.norm(xw) * np.linalg.norm(yw))
    return float(np.arccos(np.clip(cos, -1, 1)))


def modelsym_ortho_procrustes(x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference code's ``ortho_procrustes`` (paper.md section 6): the whole tensor scaled to
    unit norm, then 1 - sqrt(2 - 2 |H1'H2|_*) / 2 over (positions, C) matrices (torch)."""
    h1, h2 = to_matrix(x), to_matrix(y)
    h1, h2 = h1 / torch.linalg.vector_norm(h1), h2 / torch.linalg.vector_norm(h2)
    nuc = torch.linalg.svdvals(h1.T @ h2).sum()
    return float(1 - torch.sqrt((2 - 2 * nuc).clamp_min(0)) / 2)


def modelsym_wreath_procrustes(x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference code's ``wreath_procrustes`` (G_ReLU): each channel to unit norm, the
    cross-correlations, Hungarian matching, 1 - sqrt(d^2 / 4C) (torch and scipy)."""
    h1, h2 = to_matrix(x), to_matrix(y)
    h1 = h1 / torch.linalg.vector_norm(h1, dim=0).clamp_min(1e-300)
    h2 = h2 / torch.linalg.vector_norm(h2, dim=0).clamp_min(1e-300)
    c = (h1.T @ h2).cpu().numpy()
    r, k = linear_sum_assignment(c, maximize=True)
    d2 = float((h1 * h1).sum() + (h2 * h2).sum()) - 2 * float(c[r, k].sum())
    return 1 - (max(d2, 0.0) / (4 * c.shape[0])) ** 0.5


def metric_rows(x, y, form: str) -> list[tuple[str, Callable, str]]:
    """(name, function, floor) of every metric timed on one layout."""
    pm = "positive_monomial"
    rows = [
        ("procrustes_distance[orthogonal]", lambda: procrustes_distance(x, y), "svd"),
        (
            "procrustes_distance[permutation]",
            lambda: procrustes_distance(x, y, group="permutation"),
            "assignment",
        ),
        ("procrustes_similarity[orthogonal]", lambda: procrustes_similarity(x, y), "svd"),
        (
            "procrustes_similarity[G_ReLU]",
            lambda: procrustes_similarity(x, y, group=pm),
            "assignment",
        ),
        (
            "ProcrustesSimilarity[G_ReLU] streamed",
            lambda: streamed(lambda: ProcrustesSimilarity(group=pm), x, y),
            "assignment",
        ),
        ("cka (linear)", lambda: cka(x, y), "cka"),
        ("cka (linear, debiased)", lambda: cka(x, y, debiased=True), "cka"),
    ]
    if form == "feature":
        rows.append(("LinearCKA streamed", lambda: streamed(LinearCKA, x, y), "cka"))
    return rows


PEERS = [
    ("netrep LinearCKA", netrep_linear_cka, "cka (linear)"),
    ("netrep LinearMetric(alpha=1)", netrep_procrustes, "procrustes_distance[orthogonal]"),
    ("modelsym ortho_procrustes", modelsym_ortho_procrustes, "procrustes_similarity[orthogonal]"),
    ("modelsym wreath_procrustes", modelsym_wreath_procrustes, "procrustes_similarity[G_ReLU]"),
]


def layout_table(name: str, shape: tuple[int, ...], repeat: int, device) -> None:
    x, y = features(shape, device)
    fl, form = floors(x, y)
    rows = metric_rows(x, y, form)
    fns = {f"floor:{k}": f for k, f in fl.items()}
    fns.update({r[0]: r[1] for r in rows})
    if device.type == "cpu":
        fns.update({label: (lambda f=f: f(x, y)) for label, f, _ in PEERS})
    for fn in fns.values():  # warm up (allocator, first-call costs)
        if shape[0] <= 2000:
            fn()
    t = interleaved(fns, repeat if shape[0] * x[0].numel() < 10**7 else max(1, repeat - 2), device)
    prod, best = t["floor:product"], t["floor:best product"]
    floor_of = {
        "svd": (prod + t["floor:svd"], best + t["floor:svd"]),
        "assignment": (prod + t["floor:assignment"], best + t["floor:assignment"]),
        "cka": (t["floor:cka"], t["floor:best cka"]),
    }
    floats = x.numel()
    print(f"\n{name} {tuple(shape)} float64 on {device}; linear CKA form: {form}; "
          f"X'Y product {prod:.3f} s torch, {best:.3f} s best; CPU-time medians")  # fmt: skip
    print(f"{'metric':40s} {'seconds':>9s} {'torch fl':>9s} {'ratio':>6s} {'best fl':>9s} "
          f"{'ratio':>6s} {'ns/float':>9s}")  # fmt: skip
    for label, _, floor in rows:
        sec = t[label]
        per = f"{1e9 * sec / floats:9.1f}" if floor == "cka" else ""
        ft, fb = floor_of[floor]
        print(f"{label:40s} {sec:9.3f} {ft:9.3f} {sec / ft:6.2f} {fb:9.3f} {sec / fb:6.2f} {per}")
    if device.type == "cpu":
        print(f"{'peer (their algorithm, re-implemented)':40s} {'seconds':>9s} {'ours':>9s} "
              f"{'ours/peer':>9s}")  # fmt: skip
        for label, _, ours in PEERS:
            print(f"{label:40s} {t[label]:9.3f} {t[ours]:9.3f} {t[ours] / t[label]:9.2f}")


# ---- G_ReLU-CKA against the reference loop -------------------------------------------------------
def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra memory: resident set size sampled every 2 ms (CPU), or CUDA's allocator peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.peak = torch.cuda.memory_allocated(self.device)
            return self
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
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def preprocess_reference(h: torch.Tensor) -> torch.Tensor:
    """Centre and unit-normalise each channel over (N, h, w), as the reference does."""
    h = h.double()
    h = h - h.mean(dim=(0, 2, 3), keepdim=True)
    return h / torch.linalg.vector_norm(h, dim=(0, 2, 3), keepdim=True)


def reference_kernel(h: torch.Tensor) -> torch.Tensor:
    """The reference loop: row i against rows j < i, one O(j C h w) product each, then max_c."""
    n = h.shape[0]
    k = torch.zeros(n, n, dtype=h.dtype, device=h.device)
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


def reference_loop_estimate(h1: torch.Tensor, h2: torch.Tensor, device, rows: int = 40) -> float:
    """CPU seconds of ``reference_g_relu_cka`` estimated by timing ``rows`` rows i of its loop,
    evenly spread over [1, N), each with its O(i C h w) product at the real size (so cache
    effects of large N count), scaled by (N - 1) / rows; preprocessing timed in full."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    total = 0.0
    for h in (h1, h2):
        t0 = clock()
        hp = preprocess_reference(h)
        total += clock() - t0
        n = hp.shape[0]
        idx = sorted({int(round(1 + k * (n - 2) / (rows - 1))) for k in range(rows)})
        t0 = clock()
        for i in idx:
            (hp[i : i + 1] * hp[:i]).sum(dim=(2, 3)).amax(dim=1)
        sync(device)
        total += (clock() - t0) * (n - 1) / len(idx)
    return total


def group_cka_table(sizes: tuple[int, ...], n_ref: int, repeat: int, device) -> None:
    c, s = 64, 64
    a = torch.randn(2048, 2048, device=device)
    an = a.cpu().numpy()
    print(f"\nG_ReLU-CKA, conv features {c} x 8 x 8 (float32 inputs) on {device}; floor: the "
          "batched products at the float32 matmul rate; medians of runs interleaved with a "
          "2048^3 float32 matmul")  # fmt: skip
    print(f"{'N':>6s} {'products':>9s} {'seconds':>8s} {'GFLOP/s':>8s} {'matmul':>8s} "
          f"{'ratio':>6s} {'peak MiB':>9s} {'vs loop':>8s} {'value':>10s}")  # fmt: skip
    ref_x, ref_y = features((n_ref, c, 8, 8), device, torch.float32, seed=1)
    t_ref = interleaved({"ref": lambda: reference_g_relu_cka(ref_x, ref_y)}, 1, device)["ref"]
    v_ref = reference_g_relu_cka(ref_x, ref_y)
    for n in sizes:
        x, y = features((n, c, 8, 8), device, torch.float32, seed=1)
        flops = 2 * 2 * c * s * n * (n + 1) / 2
        reps = repeat if n <= 2000 else 1
        t_loop = t_ref if n == n_ref else reference_loop_estimate(x, y, device)
        for dtype in (torch.float32, torch.float64):
            fns = {
                "matmul": lambda: a @ a,
                "numpy matmul": lambda: an @ an,
                "ours": lambda x=x, y=y, d=dtype: group_cka(x, y, dtype=d),
            }
            t = interleaved(fns, reps, device)
            # The floor: the faster of torch's and numpy's float32 matmul rates.
            rate = 2 * 2048**3 / min(t["matmul"], t["numpy matmul"]) / 1e9
            with PeakMemory(device) as mem:
                v = group_cka(x, y, dtype=dtype)
            got = flops / t["ours"] / 1e9
            print(f"{n:6d} {str(dtype)[6:]:>9s} {t['ours']:8.2f} {got:8.1f} {rate:8.1f} "
                  f"{rate / got:6.2f} {mem.extra_mib:9.0f} {t_loop / t['ours']:7.0f}x {v:10.6f}")  # fmt: skip
        what = "measured" if n == n_ref else "estimated from 40 sampled rows of its loop"
        print(
            f"{'':6s} reference loop at N = {n}: {t_loop:.1f} s ({what})"
            + (f", value {v_ref:.6f} (|difference| {abs(v - v_ref):.1e})" if n == n_ref else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["layouts", "group_cka"], default=None)
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"device {device}, INTERTWINER_BLAS={products.backend()}")  # fmt: skip
    # numpy's BLAS (floors, peers) with the same thread count as torch, as ours runs it.
    with threadpool_limits(args.threads):
        shapes = QUICK if args.quick else LAYOUTS
        if args.only in (None, "layouts"):
            for name in args.layouts.split(","):
                if name in shapes:
                    layout_table(name, shapes[name], args.repeat, device)
        if args.only in (None, "group_cka"):
            sizes = (300, 600) if args.quick else (1_000, 10_000)
            group_cka_table(sizes, n_ref=sizes[0], repeat=args.repeat, device=device)


if __name__ == "__main__":
    main()
