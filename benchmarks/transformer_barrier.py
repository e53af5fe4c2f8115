"""Loss barrier between two independently trained small ViTs (``intertwiner.models`` "vit") on
MNIST, with and without alignment (heads permuted as blocks with their per-head maps, the
residual stream by an orthogonal map, GELU units permuted).

Trains (or reuses) two seeds under ``--zoo-dir``, aligns B to A by weight matching (full group
and permutations only) and by activations (full group), and prints the loss barrier and the
accuracy at alpha = 0.5 on the test split, as it is and with REPAIR (statistics on the
``--act-samples`` training images). The full-group rows select by midpoint loss on those images
(``select="midpoint"``, the default with labelled data); ``(no select)``: the full search alone.
One thread; the ViT has LayerNorm, no BatchNorm.

    python benchmarks/transformer_barrier.py              # 20 epochs, lr 3e-3, cosine
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from intertwiner import checkpoints, data
from intertwiner.alignment import align, interpolate
from intertwiner.data import random_subset
from intertwiner.training import TrainConfig, train_zoo
from lm_barrier import METHODS  # benchmarks/lm_barrier.py: the same rows for both transformers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--alphas", type=int, default=5)
    p.add_argument("--act-samples", type=int, default=1000)
    p.add_argument("--zoo-dir", default="runs/zoo_vit")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = data.load("mnist")
    cfg = {"dim": args.dim, "depth": args.depth, "heads": 4, "patch_size": 7, "mlp_ratio": 2}
    paths = train_zoo(
        "vit", [0, 1], splits, Path(args.zoo_dir), model_config=cfg,
        train_config=TrainConfig(epochs=args.epochs, lr=args.lr, schedule="cosine", num_threads=1,
                                 progress=False),
        progress=False,
    )  # fmt: skip
    a, b = (checkpoints.load(q)[0].eval() for q in paths)
    act_data = random_subset(splits.train, args.act_samples)
    rows = []
    for label, method, group, select in METHODS:
        t0 = time.perf_counter()
        bb = b
        if method is not None:
            bb = align(a, b, data=act_data, method=method, group=group, select=select).model
        secs = time.perf_counter() - t0
        c = interpolate(a, bb, args.alphas, splits.test)
        r = interpolate(a, bb, args.alphas, splits.test, repair=True, bn_data=act_data)
        rows.append({"alignment": label, "barrier": c.barrier, "midpoint": c.midpoint["accuracy"],
                     "barrier_repair": r.barrier, "midpoint_repair": r.midpoint["accuracy"],
                     "endpoints": [c.accuracies[0], c.accuracies[-1]], "seconds": secs})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nViT dim {args.dim}, depth {args.depth}, 4 heads, patch 7, {args.epochs} epochs "
          f"(Adam lr {args.lr:g}, cosine) on "
          f"MNIST; endpoints {100 * rows[0]['endpoints'][0]:.1f}% / "
          f"{100 * rows[0]['endpoints'][1]:.1f}%\n")  # fmt: skip
    print("| alignment | loss barrier | accuracy at alpha 0.5 | barrier, REPAIR | accuracy at "
          "alpha 0.5, REPAIR | seconds to align |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['alignment']} | {r['barrier']:.3f} | {100 * r['midpoint']:.1f}% | "
              f"{r['barrier_repair']:.3f} | {100 * r['midpoint_repair']:.1f}% | "
              f"{r['seconds']:.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
