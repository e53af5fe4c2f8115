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
- k-NN measures: the two Gram products (symmetric) and a top-k per row;
- linear predictivity (5 folds, 8 penalties): per fold the SVD of the centred training predictor
  and, per penalty, the fitted values U (d * U'Y) (M r q) and the leave-one-out residuals (conv:
  one (S, S) block of the hat matrix and its solve per training input and penalty, S pixels);
- stochastic shape distance: the M (C, C) covariance square roots per side (batched
  eigendecompositions) and one evaluation of the objective (M products A_i T B_i and their
  singular values); the measure does this for 34 starts times the iterations each takes, which the
  ratio shows. Its inputs are Gaussian statistics of 10 repeats of M conditions (``STOCHASTIC``);
  on deterministic dense or conv features it is the closed-form Procrustes step (moment floor).

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
#: (repeats, conditions, neurons) of the stochastic inputs, full and quick.
STOCHASTIC = {"full": (10, 500, 32), "quick": (10, 200, 16)}
K = 10
FOLDS, PENALTIES = 5, 8


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


def predictivity_floor(positions: int):
    """``positions``: rows per input (1 dense, H*W conv)."""

    def make(xm: torch.Tensor, ym: torch.Tensor) -> Callable[[], None]:
        n = xm.shape[0] // positions
        held = torch.tensor_split(torch.arange(n), FOLDS)

        def run() -> None:
            for fold in held:
                keep = torch.ones(n, dtype=torch.bool)
                keep[fold] = False
                rows = keep.repeat_interleave(positions)
                xt, yt = xm[rows], ym[rows]
                xt, yt = xt - xt.mean(0), yt - yt.mean(0)
                u, sv, _ = torch.linalg.svd(xt, full_matrices=False)
                uy = u.T @ yt
                for a in range(PENALTIES):
                    d = sv**2 / (sv**2 + 10.0 ** (a - 6) * sv[0] ** 2)
                    fitted = u @ (d[:, None] * uy)
                    if positions == 1:
                        (yt - fitted) / (1 - (u * u * d).sum(1, keepdim=True))
                    else:
                        ug = u.view(-1, positions, u.shape[1])
                        h = (ug * d) @ ug.transpose(1, 2)  # (inputs, S, S) hat blocks
                        eye = torch.eye(positions, dtype=h.dtype)
                        r = (yt - fitted).view(-1, positions, yt.shape[1])
                        torch.linalg.solve(eye - h, r)

        return run

    return make


def stochastic_floor(make_stats: Callable[[], tuple]) -> Callable[..., Callable[[], None]]:
    def make(*_: object) -> Callable[[], None]:
        sx, sy = make_stats()

        def run() -> None:
            roots = []
            for st in (sx, sy):
                lam, v = torch.linalg.eigh(st.covariances)
                roots.append((v * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2))
            t = torch.eye(roots[0].shape[-1], dtype=torch.float64)
            torch.linalg.svdvals(roots[0] @ t @ roots[1])

        return run

    return make


def stochastic_inputs(shape: tuple[int, int, int]) -> tuple:
    g = torch.Generator().manual_seed(5)
    r, m, c = shape
    base = torch.randn(1, m, c, generator=g, dtype=torch.float64)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64) / c**0.5
    x = base + 0.5 * torch.randn(r, m, c, generator=g, dtype=torch.float64)
    y = (base + 0.5 * torch.randn(r, m, c, generator=g, dtype=torch.float64)) @ mix
    return metrics.gaussian_stats(x), metrics.gaussian_stats(y)


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
    ("linear_predictivity", {}, "predictivity", "matrix"),
    ("stochastic_shape_distance", {}, moment_floor("shape"), "matrix"),
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
                if floor == "predictivity":
                    floor = predictivity_floor(1 if layout == "dense" else shape[2] * shape[3])
                f = cpu_time(floor(*views[view]), args.repeat)
                print(f"{m.name:44s} {layout:7s} {str(tuple(shape)):>20s} {t:9.3f} {f:9.3f} "
                      f"{t / f:6.2f}", flush=True)  # fmt: skip
        if not only or "stochastic_shape_distance" in only:
            rmc = STOCHASTIC["quick" if args.quick else "full"]
            stats = stochastic_inputs(rmc)
            m = metrics.metric("stochastic_shape_distance")
            t = cpu_time(lambda: m(*stats), args.repeat)
            f = cpu_time(stochastic_floor(lambda: stats)(), args.repeat)
            print(f"{m.name:44s} {'gauss':7s} {str(rmc):>20s} {t:9.3f} {f:9.3f} {t / f:6.2f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
