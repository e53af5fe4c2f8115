"""Representational similarity analysis (Kriegeskorte et al. 2008).

Each representation gives a representational dissimilarity matrix (RDM) over its N inputs (one row
per input: conv and token features flattened, ``to_flat``), and RSA is the correlation of the two
RDMs' upper triangles (the N (N - 1) / 2 pairs i < j, in ``scipy.spatial.distance.pdist`` order).

RDM distances (``rdm``): ``"correlation"`` (default, as in most RSA work: 1 - Pearson correlation of
two inputs' feature vectors), ``"euclidean"``, ``"cosine"``; comparison (``compare``):
``"spearman"`` (default; ties get average ranks, as ``scipy.stats.spearmanr``) or ``"pearson"``.

Conventions where scipy gives NaN: a zero input vector (cosine) or a constant one (correlation) has
similarity 0, i.e. distance 1, to every other input. Squared Euclidean distances are formed from Gram
products; those below 64 eps of the two squared norms are round-off and are set to exactly 0, so
duplicated inputs tie as they do in ``pdist``. RDMs with no variance (every pair equally far) have no
correlation: a warning and 0.0.

Invariance: Euclidean and cosine RDMs are invariant to orthogonal maps of the features; correlation
RDMs centre each input over its features, which only permutations of the neurons preserve. Range
[-1, 1]. Floor: the two N x N Gram products, N^2 (p + q) multiply-adds; Spearman adds two sorts of the
N (N - 1) / 2 distances. Memory: the two condensed RDMs and their ranks, O(N^2), built in blocks.
"""

from __future__ import annotations

import torch

from intertwiner import _products as products
from intertwiner._types import FeatureLike
from intertwiner.errors import TooFewSamplesError
from intertwiner.layouts import to_flat
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import check_choice
from intertwiner.metrics._prep import (
    check_same_n,
    f64,
    scale_exponent,
    times_power_of_two,
    validate,
)

RDMS = ("correlation", "euclidean", "cosine")
COMPARISONS = ("spearman", "pearson")
VALUE_RANGE = (-1.0, 1.0)
#: Squared distances below this many eps of |x_i|^2 + |x_j|^2 are round-off of a zero distance.
ZERO_DISTANCE_EPS = 64
#: Rows of the RDM computed at once.
BLOCK_ROWS = 512


def input_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, features) float64, scaled by a power of two so its peak is near 1 (scale-free)."""
    flat = to_flat(x)
    return times_power_of_two(f64(flat), scale_exponent(flat))


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; zero rows stay zero (similarity 0 to everything)."""
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


def _copy_upper(block: torch.Tensor, out: torch.Tensor, pos: int) -> int:
    """Copy the entries above the diagonal of a (rows, N - first) block whose first column is its
    first row's own input into ``out`` from ``pos``, row-major; the next free position. (Row
    slices: four times faster than a boolean mask here.)"""
    for r in range(block.shape[0]):
        row = block[r, r + 1 :]
        out[pos : pos + row.shape[0]].copy_(row)
        pos += row.shape[0]
    return pos


def rdm(x: torch.Tensor, kind: str = "correlation") -> torch.Tensor:
    """The condensed RDM (the N (N - 1) / 2 pairs i < j, row-major, as ``pdist``) of validated
    features ``x``, built in blocks of rows against the later rows only (half the Gram product;
    memory: the result plus one block)."""
    check_choice(kind, "rdm", RDMS)
    rows = input_rows(x)
    if kind == "correlation":
        rows = rows - rows.mean(1, keepdim=True)
    if kind != "euclidean":
        rows = _unit_rows(rows)
    n = rows.shape[0]
    sq = (rows * rows).sum(1)
    eps = ZERO_DISTANCE_EPS * torch.finfo(torch.float64).eps
    out = torch.empty(n * (n - 1) // 2, dtype=torch.float64)
    pos = 0
    for i in range(0, n, BLOCK_ROWS):
        g = products.matmul(rows[i : i + BLOCK_ROWS], rows[i:].T)  # a fresh block: in place
        if kind != "euclidean":
            pos = _copy_upper(g.neg_().add_(1.0), out, pos)
            continue
        both = sq[i : i + BLOCK_ROWS, None] + sq[None, i:]
        d2 = g.mul_(-2.0).add_(both).clamp_(min=0.0)
        d2.masked_fill_(d2 <= both.mul_(eps), 0.0)
        pos = _copy_upper(d2, out, pos)
    return out.sqrt_() if kind == "euclidean" else out


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``v``, ties sharing their average rank (``scipy.stats.rankdata``'s default)."""
    sv, order = torch.sort(v, stable=True)
    starts = torch.ones_like(sv, dtype=torch.bool)
    starts[1:] = sv[1:] != sv[:-1]
    group = torch.cumsum(starts, 0) - 1
    first = torch.nonzero(starts).flatten().to(torch.float64)
    last = torch.cat([first[1:], torch.tensor([float(v.numel())], dtype=torch.float64)]) - 1
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = ((first + last) / 2.0 + 1.0)[group]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    """Pearson correlation of two vectors; a warning and 0.0 when either is constant."""
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    if na == 0.0 or nb == 0.0:
        return undefined(f"{what}: an RDM with no variance has no correlation")
    return clip(float(a @ b) / (na * nb), *VALUE_RANGE)


def compare_rdms(a: torch.Tensor, b: torch.Tensor, compare: str = "spearman") -> float:
    """Spearman or Pearson correlation of two condensed RDMs."""
    check_choice(compare, "compare", COMPARISONS)
    if compare == "spearman":
        a, b = average_ranks(a), average_ranks(b)
    return pearson(a, b, "RSA")


@measure("permutation", VALUE_RANGE)
def rsa(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    rdm: str = "correlation",
    compare: str = "spearman",
) -> float:
    """RSA: the ``compare`` correlation of the ``rdm`` RDMs of X and Y (see the module).

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same N >= 3 inputs, any widths or layouts (one
    row per input). Range [-1, 1]. Invariant to permutations of the neurons (``rdm="euclidean"`` or
    ``"cosine"``: to orthogonal maps).
    """
    check_choice(rdm, "rdm", RDMS)
    check_choice(compare, "compare", COMPARISONS)
    x, y = validate(X, "X"), validate(Y, "Y")
    check_same_n(x, y)
    if x.shape[0] < 3:
        raise TooFewSamplesError(
            f"RSA needs at least 3 inputs (3 pairs to correlate), got {x.shape[0]}; pass more"
        )
    return compare_rdms(_rdm(x, rdm), _rdm(y, rdm), compare)


_rdm = rdm


def rsa_invariance(rdm: str = "correlation") -> str:
    """The family RSA with this RDM distance is invariant to."""
    check_choice(rdm, "rdm", RDMS)
    return "permutation" if rdm == "correlation" else "orthogonal"
