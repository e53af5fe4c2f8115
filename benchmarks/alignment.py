"""Alignment benchmark: loss barrier and midpoint accuracy between independently trained models.

Trains (or reuses) ``--seeds`` models per architecture on MNIST with ``train_zoo`` under
``--zoo-dir``, then for every pair of seeds interpolates A and B (``--alphas`` points, test split)
with B aligned to A in each way:

- ``none``: no alignment,
- ``perm/weights``: permutations only, weight matching (Git Re-Basin's algorithm),
- ``full/weights``: each site's full intertwiner group (ReLU: permutation x positive scale),
- ``perm/activations`` and ``full/activations``: activation matching on ``--act-samples``
  training images,

each with and without re-estimating BatchNorm statistics (on ``--bn-samples`` training images).
Prints, per architecture and method, the loss barrier and the accuracy at alpha = 0.5 (mean +- std
over pairs), the weight distance after alignment and the time to align.

    python benchmarks/alignment.py                    # mlp, myrtle_cnn, resnet20; seeds 0-2
    python benchmarks/alignment.py --archs resnet20 --json out.json
    python benchmarks/alignment.py --report out.json             # the tables of a saved run

Timings depend on the machine; on a shared CPU they are noisy (say so next to any number).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from intertwiner import checkpoints, data
from intertwiner.alignment import align, interpolate, weight_distance
from intertwiner.data import random_subset
from intertwiner.experiments.alignment_job import ALIGNMENTS
from intertwiner.training import TrainConfig, parse_seeds, train_zoo

ARCHS = {
    "mlp": ({"widths": [256, 128]}, 5),
    "myrtle_cnn": ({"width": 16}, 4),
    "resnet20": ({"width": 16}, 4),
}


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    splits = data.load("mnist")
    train = random_subset(splits.train, args.bn_samples)
    act_data = random_subset(splits.train, args.act_samples)
    test = random_subset(splits.test, args.eval_samples)
    rows = []
    for arch in args.archs.split(","):
        cfg, epochs = ARCHS[arch]
        paths = train_zoo(
            arch,
            args.seeds,
            splits,
            Path(args.zoo_dir) / arch,
            model_config=cfg,
            train_config=TrainConfig(epochs=epochs, num_threads=args.threads, progress=False),
            progress=False,
        )
        pairs = list(itertools.combinations(range(len(paths)), 2))[: args.pairs]
        for ia, ib in pairs:
            a, meta_a = checkpoints.load(paths[ia])
            b, meta_b = checkpoints.load(paths[ib])
            for label, method, group in ALIGNMENTS:
                t0 = time.perf_counter()
                if method is None:
                    aligned, sweeps = b, 0
                else:
                    res = align(a, b, data=act_data, method=method, group=group, seed=0)
                    aligned, sweeps = res.model, res.sweeps
                seconds = time.perf_counter() - t0
                for reset in (False, True) if arch != "mlp" else (False,):
                    curve = interpolate(
                        a, aligned, args.alphas, test, reset_bn=reset, bn_data=train
                    )
                    row = {
                        "arch": arch,
                        "pair": [ia, ib],
                        "method": label,
                        "reset_bn": reset,
                        "barrier": curve.barrier,
                        "mid_accuracy": curve.midpoint["accuracy"],
                        "acc_a": curve.accuracies[0],
                        "acc_b": curve.accuracies[-1],
                        "distance": weight_distance(a, aligned),
                        "align_seconds": seconds,
                        "sweeps": sweeps,
                        "curve": curve.to_dict(),
                    }
                    rows.append(row)
                    print(
                        f"{arch:10s} {ia}-{ib} {label:17s} bn_reset={int(reset)} "
                        f"barrier {row['barrier']:.3f} mid acc {100 * row['mid_accuracy']:.1f}% "
                        f"dist {row['distance']:.3f} align {seconds:.2f}s ({sweeps} sweeps)",
                        flush=True,
                    )
    return rows


def _ms(values) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f}"


def report(rows: list[dict]) -> str:
    out = [
        "arch        method             BN reset  loss barrier     acc @ 0.5 (%)    "
        "distance  align s",
        "-" * 100,
    ]
    keys = []
    for r in rows:
        k = (r["arch"], r["method"], r["reset_bn"])
        if k not in keys:
            keys.append(k)
    for arch, method, reset in keys:
        sel = [r for r in rows if (r["arch"], r["method"], r["reset_bn"]) == (arch, method, reset)]
        acc = _ms([100 * r["mid_accuracy"] for r in sel])
        out.append(
            f"{arch:11s} {method:18s} {'yes' if reset else 'no':8s}  "
            f"{_ms([r['barrier'] for r in sel]):16s} {acc:16s} "
            f"{statistics.mean(r['distance'] for r in sel):8.3f}  "
            f"{statistics.mean(r['align_seconds'] for r in sel):6.2f}"
        )
    ends = {}
    for r in rows:
        ends.setdefault(r["arch"], []).extend([r["acc_a"], r["acc_b"]])
    out.append("")
    out += [f"endpoint test accuracy {k}: {_ms([100 * x for x in v])} %" for k, v in ends.items()]
    # full vs permutation: barrier ratio per architecture (weights, best BN setting)
    out.append("")
    for arch in dict.fromkeys(r["arch"] for r in rows):
        for how in ("weights", "activations"):
            for reset in (False, True):
                p = [r["barrier"] for r in rows if r["arch"] == arch and
                     r["method"] == f"perm/{how}" and r["reset_bn"] == reset]  # fmt: skip
                f = [r["barrier"] for r in rows if r["arch"] == arch and
                     r["method"] == f"full/{how}" and r["reset_bn"] == reset]  # fmt: skip
                if p and f:
                    out.append(
                        f"{arch} {how} (BN reset {'yes' if reset else 'no'}): barrier full - perm "
                        f"= {statistics.mean(f) - statistics.mean(p):+.3f}"
                    )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mlp,myrtle_cnn,resnet20")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--zoo-dir", default="/tmp/intertwiner_zoo_alignment")
    ap.add_argument("--alphas", type=int, default=5)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--bn-samples", type=int, default=1000)
    ap.add_argument("--act-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="Save the rows here.")
    ap.add_argument("--report", default=None, help="Print the tables of a saved run.")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    parse_seeds(args.seeds)
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
