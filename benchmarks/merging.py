"""Merging benchmark (issue 23): loss barrier and midpoint accuracy of plain ``nn.Sequential`` models.

A new user's models, not the zoo's: an MLP, a CNN without BatchNorm and the same CNN with it,
trained on the offline MNIST subset (Adam, lr 2e-3, cosine schedule, ``--epochs`` epochs,
``--seeds`` seeds, every pair). For each
pair B is aligned to A in each way:

- ``naive``: no alignment,
- ``rebasin``: the ``rebasin`` package (Git Re-Basin's permutation coordinate descent), if installed,
- ``perm/weights``, ``perm/activations``: our alignment restricted to permutations,
- ``full/weights``, ``full/activations``: each site's full intertwiner group with the default
  scale rule (``scales="balanced"``: both models at the least-norm point of their scaling orbit)
  and the default barrier-aware selection (``select="midpoint"``: among the full search, the
  permutations-only search and, by weights, the full search started from the permutations'
  solution, the element whose midpoint has the lowest loss on the fitting images; for the
  REPAIR columns the midpoints are REPAIRed in the selection too),
- ``full/weights (no select)``, ``full/activations (no select)``: ``select=None``, the full
  search alone (the default before the selection),
- ``... (unit norm)``: ``scales="unit_norm"`` (canonical forms: incoming norms 1),
- ``... (distance)``: the old rule (``scales="distance"``: scales that minimise the weight
  distance),
- ``full/weights (from perm)``: the full-group search (balanced) started from ``perm/weights``'s
  solution (B aligned by permutations, then aligned again with the full group),

and the line from A to aligned B is evaluated at ``--alphas`` points on the test split, once with
BatchNorm statistics re-estimated (``reset_bn``; nothing to do without BN) and once with REPAIR
(``repair=True``; ``--residual sum`` repairs a residual add's output instead of its module
summands), both fitted on ``--bn-samples`` training images. Prints, per architecture and
method, the mean over pairs of the loss barrier and of the accuracy at alpha = 0.5.

    python benchmarks/merging.py                              # 3 archs, seeds 0-2, 10 epochs
    python benchmarks/merging.py --archs mlp --json out.json
    python benchmarks/merging.py --report out.json            # the table of a saved run
    python benchmarks/merging.py --archs resnet20_x1,resnet20_x2 --epochs 3   # the zoo's ResNet-20
    python benchmarks/merging.py --data concepts --epochs 5   # the procedural concept scenes
    python benchmarks/merging.py --archs resnet20_x4 --epochs 1 --train-samples 1000  # a subset

Trained checkpoints are cached under ``--cache`` (safetensors state dicts), so reruns only align
and evaluate. Single thread (``torch.set_num_threads(1)``); times are of a shared CPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from intertwiner import data
from intertwiner.alignment import align, interpolate
from intertwiner.data import random_subset
from intertwiner.training import TrainConfig, evaluate, train

ARCHS = ("mlp", "cnn", "cnn_bn")

#: (label, method, group, scales); method None: no alignment; "rebasin": the rebasin package.
METHODS = (
    ("naive", None, "none", None),
    ("rebasin", "rebasin", "permutation", None),
    ("perm/weights", "weights", "permutation", None),
    ("perm/activations", "activations", "permutation", None),
    ("full/weights", "weights", "full", "balanced"),
    ("full/activations", "activations", "full", "balanced"),
    ("full/weights (unit norm)", "weights", "full", "unit_norm"),
    ("full/activations (unit norm)", "activations", "full", "unit_norm"),
    ("full/weights (distance)", "weights", "full", "distance"),
    ("full/weights (from perm)", "weights", "full", "from_perm"),
    ("full/activations (distance)", "activations", "full", "distance"),
    ("full/weights (no select)", "weights", "full", "balanced"),
    ("full/activations (no select)", "activations", "full", "balanced"),
)
#: The labels whose alignment selects by midpoint loss (``align``'s default with labelled data);
#: every other row is one search (``select=None``), as measured before the selection existed.
SELECTING = ("full/weights", "full/activations")


#: ``--data``: (channels, side, classes) of the images: the MNIST subset (3,600 training
#: images) or the procedural concept scenes (``intertwiner.data.concepts``: RGB 32x32, 5 shapes).
DATA = {"mnist": (1, 28, 10), "concepts": (3, 32, 5)}


def build(arch: str, seed: int, dataset: str = "mnist") -> nn.Module:
    """A plain ``nn.Sequential`` (no zoo config): what a new user would write; ``resnet20_xW``:
    the zoo's ResNet-20 (BatchNorm, residual streams) at W times the base width 16."""
    torch.manual_seed(seed)
    channels, side, classes = DATA[dataset]
    if arch.startswith("resnet20_x"):
        from intertwiner import models

        width = 16 * int(arch.removeprefix("resnet20_x"))
        return models.build(
            "resnet20", width=width, in_channels=channels, input_size=side, num_classes=classes,
            seed=seed,
        )  # fmt: skip
    if arch == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, classes),
        )
    bn = arch == "cnn_bn"

    def block(cin: int, cout: int) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)
        return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU()]

    return nn.Sequential(
        *block(channels, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(576, classes),
    )


def trained(
    arch: str, seed: int, splits, epochs: int, cache: Path, dataset: str = "mnist",
    train_samples: int | None = None,
) -> nn.Module:  # fmt: skip
    """Train (or load from ``cache``) one model; ``train_samples``: a subset of the training
    split (the first ones of a seeded permutation), to keep wide models affordable."""
    tag = "" if dataset == "mnist" else f"{dataset}-"
    tag += "" if train_samples is None else f"n{train_samples}-"
    path = cache / f"{tag}{arch}-seed{seed}-e{epochs}.safetensors"
    model = build(arch, seed, dataset)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    config = TrainConfig(
        epochs=epochs, lr=2e-3, schedule="cosine", num_threads=1, progress=False, seed=seed
    )
    t0 = time.perf_counter()
    if train_samples is not None:
        splits = dataclasses.replace(splits, train=random_subset(splits.train, train_samples))
    model = train(model, splits, config).model.cpu().eval()
    cache.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    print(f"trained {arch} seed {seed} in {time.perf_counter() - t0:.0f}s", flush=True)
    return model


def rebasin_align(a: nn.Module, b: nn.Module, example: torch.Tensor) -> nn.Module | None:
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return None
    b = copy.deepcopy(b)
    pcd = PermutationCoordinateDescent(copy.deepcopy(a), b, example)
    pcd.rebasin()
    return b


def run(args) -> list[dict]:
    from metrics import PeakMemory  # benchmarks/metrics.py: resident set size sampled every 2 ms

    torch.set_num_threads(1)
    splits = data.load(args.data)
    fit = random_subset(splits.train, args.bn_samples)
    test = random_subset(splits.test, args.eval_samples)
    example = torch.stack([fit[i][0] for i in range(8)])
    cache = Path(args.cache)
    rows = []
    methods = [m for m in METHODS if args.methods is None or m[0] in args.methods.split(",")]
    for arch in args.archs.split(","):
        models = [
            trained(arch, s, splits, args.epochs, cache, args.data, args.train_samples)
            for s in range(args.seeds)
        ]
        chance = 100 / DATA[args.data][2]
        acc = statistics.mean(100 * evaluate(m, test)["accuracy"] for m in models)
        if acc < chance + args.min_over_chance:
            # A model that has not learned (the MLP on the concept scenes memorises its training
            # scenes and stays at chance on test) has flat lines: its barriers say nothing.
            print(f"skipping {arch}: endpoints at {acc:.1f}% on test, chance {chance:.1f}% "
                  f"(< {args.min_over_chance} points above: it did not learn)", flush=True)  # fmt: skip
            continue
        every = [f"{ia}-{ib}" for ia, ib in itertools.combinations(range(len(models)), 2)]
        wanted = every if args.pairs is None else args.pairs.split(",")
        if set(wanted) - set(every):
            raise SystemExit(f"--pairs {args.pairs}: no such pair of seeds; pairs are {every}")
        for ia, ib in itertools.combinations(range(len(models)), 2):
            if f"{ia}-{ib}" not in wanted:
                continue
            a, b = models[ia], models[ib]
            for label, method, group, scales in methods:
                chosen = {}
                with PeakMemory(torch.device("cpu")) as memory:  # peak extra RSS of the align step
                    t0 = time.perf_counter()
                    if method is None:
                        aligned = b
                    elif method == "rebasin":
                        aligned = rebasin_align(a, b, example)
                        if aligned is None:
                            continue
                    elif scales == "from_perm":  # the full-group search started at perm/weights'
                        start = align(a, b, group="permutation", example_input=example).model
                        aligned = align(a, start, example_input=example).model
                    else:
                        opts = {} if scales is None else {"scales": scales}
                        opts["select"] = "midpoint" if label in SELECTING else None
                        res = align(
                            a, b, data=fit, method=method, group=group, example_input=example,
                            **opts,
                        )  # fmt: skip
                        aligned, chosen = res.model, _chosen(res)
                    seconds = time.perf_counter() - t0
                with torch.no_grad():
                    change = float((aligned(example) - b(example)).abs().max()) / float(
                        b(example).abs().max()
                    )
                row = {"arch": arch, "pair": [ia, ib], "method": label, "seconds": seconds,
                       "function_change": change, "peak_mib": memory.extra_mib}  # fmt: skip
                row["residual"] = args.residual
                for key, opts in (("reset", {}), ("repair", {"repair": args.residual})):
                    end = aligned
                    if key == "repair" and label in SELECTING:
                        # the selection REPAIRs its candidate midpoints as this column does
                        res = align(
                            a, b, data=fit, method=method, group=group, example_input=example,
                            select_repair=args.residual,
                        )  # fmt: skip
                        end, chosen = res.model, {**chosen, **_chosen(res, key)}
                    curve = interpolate(a, end, args.alphas, test, bn_data=fit, **opts)
                    row[key] = {
                        "barrier": curve.barrier,
                        "mid_accuracy": curve.midpoint["accuracy"],
                        "ends": [curve.accuracies[0], curve.accuracies[-1]],
                    }
                if chosen:
                    row["selection"] = chosen
                rows.append(row)
                if args.json:  # after every row: an interrupted run keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=1))
                r, p = row["reset"], row["repair"]
                print(
                    f"{arch:7s} {ia}-{ib} {label:28s} barrier {r['barrier']:.3f} "
                    f"mid {100 * r['mid_accuracy']:5.1f}% | repair {p['barrier']:.3f} "
                    f"mid {100 * p['mid_accuracy']:5.1f}% | {seconds:.2f}s, "
                    f"f change {change:.1e}",
                    flush=True,
                )
    return rows


def _chosen(res, key: str = "reset") -> dict:
    """The selection of an ``align`` result as a row entry ({} when none ran)."""
    sel = res.selection
    return {} if sel is None else {key: {"chosen": sel.chosen, "losses": sel.losses}}


def report(rows: list[dict]) -> str:
    out = [
        "| model (endpoints) | method | barrier, BN reset | mid acc. (%), BN reset | "
        "barrier, repair | mid acc. (%), repair | align (s) | align peak (MiB) | "
        "aligned B's output change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["arch"], r["method"]) for r in rows))
    for arch, method in keys:
        sel = [r for r in rows if (r["arch"], r["method"]) == (arch, method)]
        ends = [100 * e for r in sel for e in r["reset"]["ends"]]

        def m(key, field, scale=1.0, sel=sel):
            return statistics.mean(scale * r[key][field] for r in sel)

        out.append(
            f"| {arch} ({statistics.mean(ends):.1f}%) | {method} | {m('reset', 'barrier'):.3f} | "
            f"{m('reset', 'mid_accuracy', 100):.1f} | {m('repair', 'barrier'):.3f} | "
            f"{m('repair', 'mid_accuracy', 100):.1f} | "
            f"{statistics.mean(r['seconds'] for r in sel):.2f} | {_peak(sel)} | "
            f"{max(r['function_change'] for r in sel):.1e} |"
        )
    out.append("")
    out += _goals(rows)
    return "\n".join(out)


def _peak(rows: list[dict]) -> str:
    """Largest peak extra RSS of the align step over ``rows`` (rows saved before it: blank)."""
    peaks = [r["peak_mib"] for r in rows if "peak_mib" in r]
    return f"{max(peaks):.0f}" if peaks else ""


def _goals(rows: list[dict]) -> list[str]:
    """Per architecture: pairs where the full group's barrier is at most permutations' (each
    method, BN reset and REPAIR), and the REPAIRed midpoint against the endpoints' mean."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        by = {(r["method"], tuple(r["pair"])): r for r in rows if r["arch"] == arch}
        pairs = sorted({p for _, p in by})
        for method in ("weights", "activations"):
            for key in ("reset", "repair"):
                full = [by.get((f"full/{method}", p)) for p in pairs]
                perm = [by.get((f"perm/{method}", p)) for p in pairs]
                ok = [f[key]["barrier"] <= q[key]["barrier"] + 1e-9
                      for f, q in zip(full, perm, strict=True) if f and q]  # fmt: skip
                if ok:
                    out.append(f"{arch}: full/{method} barrier <= perm/{method} ({key}) on "
                               f"{sum(ok)} of {len(ok)} pairs")  # fmt: skip
        for method in SELECTING:
            for key in ("reset", "repair"):
                won = [r["selection"][key]["chosen"] for (m, _), r in by.items()
                       if m == method and key in r.get("selection", {})]  # fmt: skip
                if won:
                    counts = ", ".join(f"{c} {won.count(c)}" for c in dict.fromkeys(won))
                    out.append(f"{arch}: {method} ({key}) selected {counts}")
        for method in ("perm/weights", "full/weights", "full/activations"):
            sel = [r for (m, _), r in by.items() if m == method]
            if sel:
                gap = statistics.mean(
                    100 * (statistics.mean(r["repair"]["ends"]) - r["repair"]["mid_accuracy"])
                    for r in sel
                )
                out.append(f"{arch}: {method} with REPAIR, midpoint {gap:.1f} points below "
                           "the endpoints' mean accuracy")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--methods", default=None, help="comma-separated labels (default all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--alphas", type=int, default=11)
    p.add_argument("--bn-samples", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--data", choices=sorted(DATA), default="mnist")
    p.add_argument("--train-samples", type=int, default=None, help="train on a subset")
    p.add_argument(
        "--residual", choices=("summands", "sum"), default="summands",
        help="how REPAIR treats a residual add (alignment.RESIDUAL)",
    )  # fmt: skip
    p.add_argument(
        "--min-over-chance", type=float, default=5.0,
        help="skip an architecture whose endpoints are less than this many points above chance",
    )  # fmt: skip
    p.add_argument("--cache", default=".cache/merging")
    p.add_argument(
        "--pairs", default=None,
        help="comma-separated pairs of seeds to run, e.g. 0-2,1-2 (default every pair)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--report", default=None, help="print the table of a saved --json run")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
