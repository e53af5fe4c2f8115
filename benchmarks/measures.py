"""Speed of the similarity measures of issue 25 against their floors (not a test). Prints a table.

Layouts: dense (10,000 x 512) and conv (2,000 x 64 x 8 x 8) float64 features (``--quick``: dense
2,000 x 128, conv 500 x 32 x 8 x 8). Each measure's floor is the work it cannot avoid, done on
ready-made float64 matrices with the project's product kernels:

- moment measures (cca, cca_yanai, svcca, pwcca, linear_regression, shape_distance,
  soft_matching_distance): X'X, Y'Y (symmetric rank-k updates) and X'Y over the centred
  (positions, neurons) matrices, plus their small step: two p x p eigendecompositions and the
  p x q singular values (CCA family, shape at alpha < 1), one eigendecomposition (regression), the
  singular values (shape at alpha = 1), a p x q assignment (soft matching);
- RSA: the two N x N Gram products over one row per input (symmetric: N^2 p / 2 multiply-adds each)
  and, for Spearman, sorting the two N (N - 1) / 2 distance vectors;
- k-NN measures: the two Gram products (symmetric) and a top-k per row.

The ratio measure / floor says what the implementation adds (copies, centring, scaling, blocks).
Timings take the median of ``--repeat`` runs of process CPU time with one thread (the machine may be
shared: CPU time does not count time another job holds the core). Run:
``python benchmarks/measures.py [--quick] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from intertwiner import _products as products
from intertwiner import metrics
from intertwiner.layouts import to_flat, to_matrix

FULL = {"dense": (10_000, 512), "conv": (2_000, 64, 8, 8)}
QUICK = {"dense": (2_000, 128), "conv": (500, 32, 8, 8)}
K = 10


def cpu_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def features(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) + 0.3).relu()


def moment_floor(step: str) -> Callable[[torch.Tensor, torch.Tensor], Callable[[], None]]:
    def make(xm: torch.Tensor, ym: torch.Tensor) -> Callable[[], None]:
        xc, yc = (xm - xm.mean(0)).contiguous(), (ym - ym.mean(0)).contiguous()

        def run() -> None:
            sxx, syy, sxy = products.cov(xc), products.cov(yc), products.matmul(xc.T, yc)
            if step in ("cca", "shape_whiten"):
                torch.linalg.eigh(sxx)
                torch.linalg.eigh(syy)
                torch.linalg.svdvals(sxy)
            elif step == "regression":
                torch.linalg.eigh(sxx)
            elif step == "shape":
                torch.linalg.svdvals(sxy)
            elif step == "assignment":
                linear_sum_assignment(sxy.numpy())

        return run

    return make


def gram_floor(spearman: bool = False, topk: bool = False):
    def make(xf: torch.Tensor, yf: torch.Tensor) -> Callable[[], None]:
        n = xf.shape[0]

        def run() -> None:
            for f in (xf, yf):
                g = products.gram(f)
                if topk:
                    torch.topk(g, K + 1, dim=1)
                if spearman:
                    torch.sort(g[torch.ones(n, n, dtype=torch.bool).triu(1)])
                del g

        return run

    return make


# name, options, floor maker, view of the features the floor works on ("matrix" or "flat")
MEASURES = [
    ("cca", {}, moment_floor("cca"), "matrix"),
    ("cca_yanai", {}, moment_floor("cca"), "matrix"),
    ("svcca", {}, moment_floor("cca"), "matrix"),
    ("pwcca", {}, moment_floor("cca"), "matrix"),
    ("linear_regression", {}, moment_floor("regression"), "matrix"),
    ("shape_distance", {}, moment_floor("shape"), "matrix"),
    ("shape_distance", {"alpha": 0.5}, moment_floor("shape_whiten"), "matrix"),
    ("soft_matching_distance", {}, moment_floor("assignment"), "matrix"),
    ("rsa", {}, gram_floor(spearman=True), "flat"),
    ("rsa", {"rdm": "euclidean", "compare": "pearson"}, gram_floor(), "flat"),
    ("mutual_knn", {}, gram_floor(topk=True), "flat"),
    ("knn_jaccard", {}, gram_floor(topk=True), "flat"),
    ("cknna", {}, gram_floor(topk=True), "flat"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated measure names")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    only = {s for s in args.only.split(",") if s}
    torch.set_num_threads(1)
    print(
        f"{'measure':44s} {'layout':7s} {'shape':>20s} {'time s':>9s} {'floor s':>9s} {'ratio':>6s}"
    )
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layout, shape in sizes.items():
            x, y = features(shape, 0), features(shape, 1) + 0.5 * features(shape, 2)
            views = {"matrix": (to_matrix(x), to_matrix(y)), "flat": (to_flat(x), to_flat(y))}
            for name, options, floor, view in MEASURES:
                if only and name not in only:
                    continue
                m = metrics.metric(name, **options)
                t = cpu_time(lambda m=m, x=x, y=y: m(x, y), args.repeat)
                f = cpu_time(floor(*views[view]), args.repeat)
                print(f"{m.name:44s} {layout:7s} {str(tuple(shape)):>20s} {t:9.3f} {f:9.3f} "
                      f"{t / f:6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
