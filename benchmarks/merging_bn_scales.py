"""The BN CNN of ``merging.py`` by weights: full group against permutations, taken apart (issue 23).

For every pair of the cached ``cnn_bn`` models (``merging.py`` trains and caches them) this prints
the loss barrier (BN reset) of

- ``perm``: ``align(group="permutation")``,
- ``full``: ``align()`` (the full group, ``scales="balanced"``),
- ``full perm, scales 1``: ``full``'s permutations with every scale set to 1 (B's trained scales),
- ``full perm, scales if lower D``: ``full``'s permutations, each unit's scale kept only where it
  lowers that unit's part of the weight distance,
- ``full from perm``: the full-group search started from ``perm``'s solution,

and how many units ``full``'s and ``perm``'s permutations agree on: whether the scales or the
permutations make the difference. Single thread.

    python benchmarks/merging.py --archs cnn_bn --methods perm/weights   # trains the models once
    python benchmarks/merging_bn_scales.py
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from intertwiner import data  # noqa: E402
from intertwiner.alignment import align, interpolate  # noqa: E402
from intertwiner.alignment._weights import _terms  # noqa: E402
from intertwiner.data import random_subset  # noqa: E402
from intertwiner.groups import MonomialElement, exponents  # noqa: E402
from intertwiner.symmetry import apply  # noqa: E402
from merging import trained  # noqa: E402


def _scaled_where_lower(a, b, spec, elements) -> tuple[torch.nn.Module, int, int]:
    """B moved by ``elements``' permutations, each unit's scale kept where it lowers the unit's
    squared distance to A over the parameters its site acts on."""
    perms = {
        k: MonomialElement(e.perm, torch.ones_like(e.scale))
        if isinstance(e, MonomialElement)
        else e
        for k, e in elements.items()
    }
    moved = apply(b, spec, perms).double()
    out, kept, total = dict(perms), 0, 0
    for s in spec.sites:
        e = elements[s.name]
        if not isinstance(e, MonomialElement) or bool((e.scale == 1).all()):
            continue
        d_one = torch.zeros(s.width, dtype=torch.float64)
        d_scaled = torch.zeros_like(d_one)
        for t in _terms(s, a, moved, dense=False):  # rows in float64
            p, _ = exponents(t.kind, s.group.phi_kind)
            c, g = torch.diagonal(t.cross), t.gram
            f = e.scale.double() ** p
            d_one += g - 2 * c
            d_scaled += f * f * g - 2 * f * c
        use = d_scaled < d_one
        kept, total = kept + int(use.sum()), total + s.width
        out[s.name] = MonomialElement(e.perm, torch.where(use, e.scale, torch.ones_like(e.scale)))
    return apply(b, spec, out), kept, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cache", default=".cache/merging")
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = data.load("mnist")
    fit, test = random_subset(splits.train, 1000), random_subset(splits.test, 1000)
    example = torch.stack([fit[i][0] for i in range(8)])
    models = [
        trained("cnn_bn", s, splits, args.epochs, Path(args.cache)) for s in range(args.seeds)
    ]

    def barrier(a, m) -> float:
        return interpolate(a, m, 11, test, bn_data=fit).barrier

    print("| pair | perm | full | full perm, scales 1 | full perm, scales if lower D | "
          "full from perm | units where full's and perm's permutations agree |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for ia, ib in itertools.combinations(range(len(models)), 2):
        a, b = models[ia], models[ib]
        perm = align(a, b, example_input=example, group="permutation")
        full = align(a, b, example_input=example)
        ones = {
            k: MonomialElement(e.perm, torch.ones_like(e.scale))
            if isinstance(e, MonomialElement) else e
            for k, e in full.elements.items()
        }  # fmt: skip
        lower, kept, total = _scaled_where_lower(a, b, full.spec, full.elements)
        from_perm = align(a, perm.model, example_input=example)
        agree = [
            f"{int((e.perm == perm.elements[k].perm).sum())}/{len(e.perm)}"
            for k, e in full.elements.items()
            if isinstance(e, MonomialElement)
        ]
        print(
            f"| {ia}-{ib} | {barrier(a, perm.model):.4f} | {barrier(a, full.model):.4f} | "
            f"{barrier(a, apply(b, full.spec, ones)):.4f} | {barrier(a, lower):.4f} "
            f"({kept}/{total} kept) | {barrier(a, from_perm.model):.4f} | {', '.join(agree)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
