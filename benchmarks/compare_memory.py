"""Peak memory of ``metrics.compare`` on wide conv layers (not a test). Prints a table.

The case of issue 19: two ResNet-20s (seeds 0 and 1), 8 layers x 8 layers (stem, stage 1, 2 and 3
outputs: 16x32x32 = 16,384 to 64x8x8 = 4,096 values per input), 10,000 CIFAR-shaped inputs,
metrics ``cka``, ``cka_debiased`` and ``procrustes_similarity``. Streaming linear CKA per pair in
feature space would need 64 pairs x (16,384^2 + ...) float64 = tens of GB; ``compare`` plans the
blocked Gram form within its memory limit instead, and this script reports the process's peak
resident set size (``getrusage`` ru_maxrss: the kernel's high-water mark, torch allocations
included) next to the plan's estimate. It must stay under 4 GB.

Run: ``python benchmarks/compare_memory.py [--n 10000] [--limit 2.5GB]``; one thread (the default),
since the machine is shared. The full case takes tens of minutes on one core; ``--n 1000`` is a
quick check of the same code path.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from intertwiner import models
from intertwiner.metrics import compare

LAYERS = [
    "stem.act",
    "layer1.1.act2",
    "layer1.2.act2",
    "layer2.0.act2",
    "layer2.2.act2",
    "layer3.0.act2",
    "layer3.1.act2",
    "layer3.2.act2",
]


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of inputs")
    ap.add_argument("--limit", default=None, help="compare's memory_limit (default: its own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    a = models.build("resnet20")
    torch.manual_seed(1)
    b = models.build("resnet20")
    x = torch.randn(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = rss_peak_bytes()
    t0 = time.perf_counter()
    res = compare(
        a,
        b,
        x,
        LAYERS,
        LAYERS,
        ["cka", "cka_debiased", "procrustes_similarity"],
        memory_limit=args.limit,
        progress=args.progress,
    )
    wall = time.perf_counter() - t0
    peak = rss_peak_bytes()
    plan = res.plan
    print(
        f"compare: ResNet-20 x ResNet-20, {len(LAYERS)} x {len(LAYERS)} layers, N = {res.n_samples}"
    )
    print(f"{'quantity':42s} {'value':>12s}")
    rows = [
        ("linear CKA form", plan["form"]),
        ("passes over the data", plan["passes"]),
        ("block size (batches of 256)", plan["block_size"]),
        ("memory limit (GB)", f"{plan['memory_limit'] / 1e9:.2f}"),
        ("estimated working memory (GB)", f"{plan['estimated_bytes'] / 1e9:.2f}"),
        ("peak RSS before compare (GB)", f"{before / 1e9:.2f}"),
        ("peak RSS of the process (GB)", f"{peak / 1e9:.2f}"),
        ("wall time (s)", f"{wall:.0f}"),
    ]
    for name, value in rows:
        print(f"{name:42s} {value!s:>12s}")
    cka = res.matrices["cka"]
    print("cka diagonal (same layer, two seeds):", " ".join(f"{v:.3f}" for v in cka.diagonal()))
    print(f"peak RSS under 4 GB: {peak < 4e9}")


if __name__ == "__main__":
    main()
