"""Many-model merging benchmark: K independently trained MNIST models merged into one.

For K = 2 .. ``--max-models`` (the first K seeds of the zoo), the test accuracy of the merge with
each model aligned to ``models[0]`` (``reference=0``) or to the mean of the others, iterated to a
fixed point (``reference="mean"``: Git Re-Basin's MergeMany), with permutations only and with the
full intertwiner group, next to plain averaging, the inputs' mean accuracy and their ensemble
(averaged probabilities). BatchNorm, where present, is re-estimated on training images.

    python benchmarks/merge_many.py                        # mlp, seeds 0-3
    python benchmarks/merge_many.py --arch myrtle_cnn --max-models 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from intertwiner import checkpoints, data
from intertwiner.alignment import merge, merge_report
from intertwiner.data import random_subset
from intertwiner.training import TrainConfig, evaluate, train_zoo

ARCHS = {"mlp": ({"widths": [256, 128]}, 5), "myrtle_cnn": ({"width": 16}, 4)}


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    splits = data.load("mnist")
    bn_data = random_subset(splits.train, args.bn_samples)
    test = splits.test
    cfg, epochs = ARCHS[args.arch]
    paths = train_zoo(
        args.arch, list(range(args.max_models)), splits, Path(args.zoo_dir) / args.arch,
        model_config=cfg, train_config=TrainConfig(epochs=epochs, num_threads=1, progress=False),
        progress=False,
    )  # fmt: skip
    models = [checkpoints.load(p)[0].eval() for p in paths]
    x = next(iter(torch.utils.data.DataLoader(bn_data, batch_size=8)))[0]
    rows = []
    for k in range(2, args.max_models + 1):
        group_models = models[:k]
        base = merge_report(group_models[0], group_models, test)
        row = {
            "K": k,
            "inputs (mean)": statistics.mean(r["accuracy"] for r in base.inputs),
            "ensemble": base.ensemble["accuracy"],
        }
        variants = {"naive": dict(method=None)}
        for group in ("permutation", "full"):
            g = "perm" if group == "permutation" else "full"
            variants[f"{g}, ref 0"] = dict(group=group, reference=0)
            variants[f"{g}, mean"] = dict(group=group, reference="mean")
        for name, opts in variants.items():
            t0 = time.perf_counter()
            merged = merge(group_models, bn_data=bn_data, example_input=x, **opts)
            row[name + " seconds"] = time.perf_counter() - t0
            row[name] = evaluate(merged, test)["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], arch: str) -> str:
    names = [k for k in rows[0] if k != "K" and not k.endswith(" seconds")]
    out = [f"{arch} on MNIST: test accuracy (%) of the merge of the first K models", "",
           "| K | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['K']} | " + " | ".join(f"{100 * r[n]:.1f}" for n in names) + " |")
    secs = {
        n: statistics.mean(r[n + " seconds"] for r in rows)
        for n in names
        if n + " seconds" in rows[0]
    }
    out.append("")
    out.append("mean seconds per merge (shared 2-core CPU, noisy): " + ", ".join(
        f"{n} {s:.1f}" for n, s in secs.items()))  # fmt: skip
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="mlp", choices=sorted(ARCHS))
    p.add_argument("--max-models", type=int, default=4)
    p.add_argument("--bn-samples", type=int, default=2000)
    p.add_argument("--zoo-dir", default="runs/zoo_merge_many")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = run(args)
    print(table(rows, args.arch))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
