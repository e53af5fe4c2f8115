"""Zipping benchmark: MNIST 5+5 (digits 0-4 vs 5-9), two MLPs with 5-way heads.

For each pair (model A trained on digits 0-4, model B on 5-9, seeds ``--seeds``), the joint
accuracy on the whole MNIST test split (1,000 digits): the prediction is the argmax over the 10
logits of the two heads side by side (A's for 0-4, B's for 5-9). Compared:

- ``ensemble``: the two models side by side (``zip_models(k=0)``, exactly the ensemble),
- ``avg/perm``: B aligned to A by weight matching over permutations (Git Re-Basin), then every
  hidden layer averaged, the two heads kept (``match="identity"``, ``scales=False``),
- ``avg/full``: the same after alignment with the full intertwiner group (ReLU: scales too),
- ``zip k=K``: ZipIt! (``match="greedy"``: within and across models) on the first K sites,
  K = depth .. 1 (``k=depth``: everything but the output layer zipped; below, the layers after
  site K kept side by side as two heads), with the group's scales; ``+repair``: then REPAIR
  (every channel re-normalised to the statistics of the features it merges, on the zip data),
- ``zip within<=F k=depth``: at most a fraction F of each site's pairs within one model
  (ZipIt's alpha; 0: across models only, greedy),
- ``zip/noscale k=depth``: ZipIt's plain averages; ``zip/perm k=depth``: pairs across models
  only (one-to-one by the Hungarian method: activation matching).

Training runs are small (``--epochs`` on 2,000 images per task) and cached under ``--zoo-dir``.
Features for zipping: ``--zip-samples`` training images of all ten digits. One thread.

    python benchmarks/zipping.py                      # 3 pairs, widths 128,128,128
    python benchmarks/zipping.py --json zipping.json
    python benchmarks/zipping.py --arch cnn           # Myrtle CNN without BatchNorm, zipped whole
    python benchmarks/zipping.py --arch cnn_bn        # with BatchNorm (folded into the convs)
    python benchmarks/zipping.py --arch cnn --partial-only   # k = depth .. 1, +- REPAIR only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from intertwiner import checkpoints, data, models
from intertwiner.alignment import align, zip_models
from intertwiner.data import DataSplits
from intertwiner.symmetry import trace
from intertwiner.training import TrainConfig, train


def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def _task(x: torch.Tensor, y: torch.Tensor, lo: int) -> TensorDataset:
    keep = (y >= lo) & (y < lo + 5)
    return TensorDataset(x[keep], y[keep] - lo)


def _model(args, seed: int):
    common = dict(in_channels=1, input_size=28, num_classes=5, seed=seed)
    if args.arch in ("cnn", "cnn_bn"):  # zip folds BatchNorm into the conv before it
        bn = args.arch == "cnn_bn"
        return models.build("myrtle_cnn", width=args.cnn_width, batchnorm=bn, **common)
    return models.build("mlp", widths=args.widths, **common)


def trained(splits, tensors, lo: int, seed: int, args) -> torch.nn.Module:
    """The model for digits lo..lo+4 with ``seed``, from the cache or trained now."""
    tag = (
        f"mlp{'x'.join(map(str, args.widths))}"
        if args.arch == "mlp"
        else f"{args.arch.replace('_', '')}{args.cnn_width}"
    )
    path = Path(args.zoo_dir) / f"{tag}_digits{lo}-{lo + 4}_seed{seed}_e{args.epochs}.safetensors"
    if path.exists():
        return checkpoints.load(path)[0].eval()
    (xtr, ytr), (xva, yva), (xte, yte) = tensors
    task = DataSplits(
        _task(xtr, ytr, lo), _task(xva, yva, lo), _task(xte, yte, lo), dict(splits.meta)
    )
    model = _model(args, seed)
    cfg = TrainConfig(epochs=args.epochs, seed=seed, num_threads=1, progress=False)
    res = train(model, task, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(res.model, path, {"dataset": "mnist", "digits": [lo, lo + 4], "seed": seed})
    return res.model.eval()


@torch.no_grad()
def joint_accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).double().mean())


@torch.no_grad()
def task_accuracy(model, x, y, lo) -> float:
    keep = (y >= lo) & (y < lo + 5)
    return float((model(x[keep]).argmax(1) == y[keep] - lo).double().mean())


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    splits = data.load("mnist")
    tensors = [_tensors(s) for s in (splits.train, splits.val, splits.test)]
    xte, yte = tensors[2]
    zip_x = tensors[0][0][
        torch.randperm(len(tensors[0][0]), generator=torch.Generator().manual_seed(0))[
            : args.zip_samples
        ]
    ]
    rows = []
    for seed in args.seeds:
        a = trained(splits, tensors, 0, seed, args)
        b = trained(splits, tensors, 5, seed + 100, args)
        pair = {"seed": seed, "acc_a_own": task_accuracy(a, xte, yte, 0),
                "acc_b_own": task_accuracy(b, xte, yte, 5)}  # fmt: skip
        depth = len(trace(a, zip_x[:8]).sites)
        methods: dict[str, tuple] = {"ensemble": (a, b, dict(k=0))}
        for k in range(depth, 0, -1):  # partial zipping: the first k sites, the rest two heads
            methods[f"zip k={k}"] = (a, b, dict(k=k))
            methods[f"zip k={k} +repair"] = (a, b, dict(k=k, repair=True))
        if not args.partial_only:
            for group in ("permutation", "full"):
                bb = align(a, b, group=group, example_input=zip_x[:8], seed=0).model
                tag = "perm" if group == "permutation" else "full"
                methods[f"avg/{tag}"] = (a, bb, dict(match="identity", scales=False))
            for frac in (0.0, 0.25, 0.5):
                methods[f"zip within<={frac:g} k={depth}"] = (a, b, dict(max_within=frac))
            methods[f"zip/noscale k={depth}"] = (a, b, dict(scales=False))
            methods[f"zip/noscale within<=0 k={depth}"] = (a, b, dict(scales=False, max_within=0))
            methods[f"zip/perm k={depth}"] = (a, b, dict(match="permutation"))
        for name, (ma, mb, opts) in methods.items():
            t0 = time.perf_counter()
            z = zip_models(ma, mb, zip_x, **opts)
            pair[name] = joint_accuracy(z.model, xte, yte)
            pair[name + " seconds"] = time.perf_counter() - t0
            pair[name + " within"] = sum(s.within for s in z.sites)
        rows.append(pair)
        print(f"seed {seed}: " + ", ".join(
            f"{k} {100 * v:.1f}" for k, v in pair.items() if isinstance(v, float) and "seconds" not in k
        ), flush=True)  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k not in ("seed", "acc_a_own", "acc_b_own")
             and not k.endswith(" seconds") and not k.endswith(" within")]  # fmt: skip
    own = statistics.mean((r["acc_a_own"] + r["acc_b_own"]) / 2 for r in rows)
    out = [f"pairs: {len(rows)}; each model on its own 5 digits: {100 * own:.1f}%", "",
           "| method | joint accuracy (10 digits) | of the ensemble | vs 90% of the ensemble "
           "| same-model pairs |", "|---|---|---|---|---|"]  # fmt: skip
    for n in names:
        vals = [r[n] for r in rows]
        frac = [r[n] / r["ensemble"] for r in rows]
        sd = f" +- {100 * statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
        within = statistics.mean(r[n + " within"] for r in rows)
        of = 100 * statistics.mean(frac)
        out.append(f"| {n} | {100 * statistics.mean(vals):.1f}%{sd} | {of:.1f}% | "
                   f"{of - 90:+.1f} points | {within:.0f} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="mlp", choices=["mlp", "cnn", "cnn_bn"])
    p.add_argument("--cnn-width", type=int, default=16)
    p.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[128] * 3)
    p.add_argument("--seeds", type=lambda s: [int(w) for w in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--zip-samples", type=int, default=2000)
    p.add_argument("--zoo-dir", default="runs/zoo_zipping")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--partial-only",
        action="store_true",
        help="only the ensemble and zip k=depth..1, each with and without REPAIR",
    )
    p.add_argument("--report", default=None, help="print the table of a saved --json run")
    args = p.parse_args()
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return
    rows = run(args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
