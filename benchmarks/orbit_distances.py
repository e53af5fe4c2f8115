"""Weight distances between independently trained models, naive and modulo the traced group.

Trains ``--seeds`` models per zoo architecture on scikit-learn's digits (8 x 8, offline; a few
epochs) and, for every pair, prints the naive weight distance and the orbit distance
(``alignment.orbit_distance``: the distance minimised over the traced group, the smaller of the
two directions) with the full intertwiner group and with its permutations only (Git Re-Basin),
each relative to the geometric mean of the two models' norms; and one orbit check: a model and a
copy moved by a random element of its group (should be 0). ``--plot out.png`` draws orbit against
naive distance per pair.

    python benchmarks/orbit_distances.py [--archs mlp myrtle_cnn resnet20] [--seeds 4]

Timings are not the point here; the machine only changes how long it takes.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from intertwiner import data, models
from intertwiner.alignment import orbit_distance, weight_distance
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.training import TrainConfig, train

CONFIGS = {
    "mlp": {"widths": (64, 64)},
    "myrtle_cnn": {"width": 8},
    "resnet20": {"width": 8},
}


def _norm(m: torch.nn.Module) -> float:
    return sum(float((p.detach().double() ** 2).sum()) for p in m.parameters()) ** 0.5


def _pair(a, b, x, group: str) -> float:
    specs = (trace(b, x), trace(a, x))
    ab = orbit_distance(a, b, spec=specs[0], group=group, max_sweeps=50, tol=1e-9).distance
    ba = orbit_distance(b, a, spec=specs[1], group=group, max_sweeps=50, tol=1e-9).distance
    return min(ab, ba) / (_norm(a) * _norm(b)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = data.load("digits", seed=0)
    x = torch.stack([splits.train[i][0] for i in range(16)])
    rows, points = [], {}
    for arch in args.archs:
        trained = []
        for s in range(args.seeds):
            m = models.build(arch, seed=s, **CONFIGS[arch], **splits.model_config())
            cfg = TrainConfig(epochs=args.epochs, seed=s, progress=False)
            trained.append(train(m, splits, cfg).model.double().eval())
        xd = x.double()
        naive, full, perm = [], [], []
        for a, b in itertools.combinations(trained, 2):
            naive.append(
                weight_distance(a, b, relative=False) ** 0.5 / (_norm(a) * _norm(b)) ** 0.5
            )
            full.append(_pair(a, b, xd, "full"))
            perm.append(_pair(a, b, xd, "permutation"))
        spec = trace(trained[0], xd)
        moved = apply(trained[0], spec, random_elements(spec, torch.Generator().manual_seed(9)))
        orbit = orbit_distance(trained[0], moved, spec=spec, max_sweeps=200, tol=1e-12).relative
        rows.append((arch, naive, perm, full, orbit))
        points[arch] = (naive, full, perm)
        print(f"{arch}: done", flush=True)

    def ms(v):
        return f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"

    print("\narch        pairs  naive            permutations     full group       orbit copy")
    for arch, naive, perm, full, orbit in rows:
        print(f"{arch:<11} {len(naive):5d}  {ms(naive)}  {ms(perm)}  {ms(full)}  {orbit:.1e}")
    print("\nrelative to sqrt(|A| |B|); orbit copy: a model vs itself moved by a random element")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for arch, (naive, full, perm) in points.items():
            ax.scatter(naive, full, label=f"{arch}: full group")
            ax.scatter(naive, perm, marker="x", label=f"{arch}: permutations")
        lim = max(max(v[0]) for v in points.values()) * 1.05
        ax.plot([0, lim], [0, lim], "k--", lw=0.8)
        ax.set_xlabel("naive distance (relative)")
        ax.set_ylabel("orbit distance (relative)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
