"""k-nearest-neighbour measures (Huh et al. 2024, the Platonic Representation Hypothesis): mutual
k-NN, CKNNA, and the Jaccard index of k-NN sets.

One row per input (``to_flat``). As in the PRH code, rows are L2-normalised and neighbours are the
k most cosine-similar other inputs (an input is never its own neighbour); a zero row has similarity 0
to everything. So every measure here is invariant to orthogonal maps of the features (and to
scaling each input), not to general linear maps.

Ties. The PRH code breaks ties by ``argsort`` order, so its value depends on how the inputs are
ordered. Here each candidate tied at the k-th similarity (within ``TIE_TOL``) gets an equal share of
the remaining places: neighbour weights w_ij in [0, 1] with sum_j w_ij = k, the probability that j
is among i's neighbours when ties are broken uniformly at random. Without ties w is the PRH mask.

- ``mutual_knn(X, Y, k)``: mean_i sum_j wX_ij wY_ij / k (PRH's ``mutual_knn``: the mean fraction of
  shared neighbours; with ties, its expectation over independent random tie-breaks). Range [0, 1].
- ``knn_jaccard(X, Y, k)``: mean_i o_i / (2k - o_i), o_i = sum_j wX_ij wY_ij (|A & B| / |A | B| for
  two k-sets; with ties, at the expected overlap). Range [0, 1].
- ``cknna(X, Y, k)``: PRH's CKNNA, the unbiased HSIC of the kernels K = X^X^' and L restricted to
  the pairs that are neighbours in both (mask wX wY), normalised by the same quantity of (K, K) and
  (L, L) (masks wX, wY). PRH adds 1e-6 to the denominator; we do not (it is not scale-free). The
  masked kernels are not symmetric, so this HSIC is not an inner product and the value is not
  bounded by 1 in general (random small samples reach 1.008; in practice it lies near [-1, 1]). A non-positive self-similarity (an
  undefined normalisation) gives a warning and 0.0.

Floor: the two N x N Gram products of the normalised rows, N^2 (p + q) multiply-adds, and a top-k
per row. Mutual k-NN and Jaccard work in row blocks (memory O(block N)); CKNNA needs the whole
masked kernels (memory O(N^2)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from intertwiner import _products as products
from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError, TooFewSamplesError
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._prep import check_same_n, validate
from intertwiner.metrics._rsa import input_rows

#: Cosine similarities within this of the k-th largest are tied with it.
TIE_TOL = 1e-12
#: Rows per block of the blockwise measures (a block's similarities take about 32 MB at N = 4096).
BLOCK_ROWS = 1024


def unit_rows(X: FeatureLike, name: str) -> torch.Tensor:
    """Validated features as L2-normalised float64 rows (zero rows stay zero)."""
    rows = input_rows(validate(X, name))
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


def _check_k(k: int, n: int, least: int = 1) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < least:
        raise InvalidOptionError(f"k must be an integer >= {least}, got {k!r}")
    if k > n - 1:
        raise TooFewSamplesError(
            f"k = {k} neighbours need at least k + 1 = {k + 1} inputs, got {n}; pass more "
            "inputs or a smaller k"
        )


def neighbour_weights(sim: torch.Tensor, k: int, first_row: int = 0) -> torch.Tensor:
    """Weights w (rows, N) of the k nearest neighbours of each row of ``sim`` (similarities of
    rows ``first_row``.. against all N), ties at the k-th sharing the places left."""
    s = sim.clone()
    rows = torch.arange(s.shape[0])
    s[rows, rows + first_row] = -math.inf  # never one's own neighbour
    kth = torch.topk(s, k, dim=1).values[:, -1:]
    above = s > kth + TIE_TOL
    tied = (s - kth).abs() <= TIE_TOL
    places = (k - above.sum(1, keepdim=True)).to(s.dtype)  # int / int would be float32
    share = places / tied.sum(1, keepdim=True).to(s.dtype)
    return above.to(s.dtype) + tied.to(s.dtype) * share


def _blocks(x: torch.Tensor, y: torch.Tensor, k: int) -> Iterator[torch.Tensor]:
    """Per block of rows, the overlaps o_i = sum_j wX_ij wY_ij."""
    for i in range(0, x.shape[0], BLOCK_ROWS):
        wx = neighbour_weights(products.matmul(x[i : i + BLOCK_ROWS], x.T), k, i)
        wy = neighbour_weights(products.matmul(y[i : i + BLOCK_ROWS], y.T), k, i)
        yield (wx * wy).sum(1)


def _pair(X: FeatureLike, Y: FeatureLike, k: int, least: int = 1) -> tuple[torch.Tensor, ...]:
    x, y = unit_rows(X, "X"), unit_rows(Y, "Y")
    check_same_n(x, y)
    _check_k(k, x.shape[0], least)
    return x, y


def overlaps(X: FeatureLike, Y: FeatureLike, k: int) -> torch.Tensor:
    """o_i for every input: the (expected) number of shared k nearest neighbours."""
    x, y = _pair(X, Y, k)
    return torch.cat(list(_blocks(x, y, k)))


@measure("orthogonal", (0.0, 1.0))
def mutual_knn(X: FeatureLike, Y: FeatureLike, k: int = 10) -> float:
    """Mutual k-NN alignment (PRH): the mean fraction of each input's k nearest neighbours (cosine)
    shared by X and Y. X, Y: any layouts over the same N > k inputs (one row per input).
    Range [0, 1]; invariant to orthogonal maps. Ties: see the module."""
    return clip(float(overlaps(X, Y, k).mean()) / k, 0.0, 1.0)


@measure("orthogonal", (0.0, 1.0))
def knn_jaccard(X: FeatureLike, Y: FeatureLike, k: int = 10) -> float:
    """Mean Jaccard index of the k-NN sets (cosine) in X and in Y, |A & B| / |A | B|. Range [0, 1];
    invariant to orthogonal maps. Layouts and ties as ``mutual_knn``."""
    o = overlaps(X, Y, k)
    return clip(float((o / (2 * k - o)).mean()), 0.0, 1.0)


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:
    """PRH's ``hsic_unbiased`` of two (possibly asymmetric) N x N matrices."""
    m = k.shape[0]
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    trace = float((kt * lt.T).sum())
    sums = float(kt.sum()) * float(lt.sum()) / ((m - 1) * (m - 2))
    cross = float(kt.sum(0) @ lt.sum(1))  # 1' K L 1
    return (trace + sums - 2.0 * cross / (m - 2)) / (m * (m - 3))


@measure("orthogonal", (-math.inf, math.inf))
def cknna(X: FeatureLike, Y: FeatureLike, k: int = 10) -> float:
    """CKNNA (PRH): CKA restricted to mutual k-NN pairs (cosine kernels, unbiased HSIC).

    X, Y: any layouts over the same N inputs, N >= 4 and 2 <= k <= N - 1. Not bounded in general
    (see the module; near [-1, 1] in practice; 1 at X = Y); invariant to orthogonal maps. Memory O(N^2).
    """
    x, y = _pair(X, Y, k, least=2)
    if x.shape[0] < 4:
        raise TooFewSamplesError(f"CKNNA (unbiased HSIC) needs at least 4 inputs, got {x.shape[0]}")
    kx, ly = products.gram(x), products.gram(y)
    wx, wy = neighbour_weights(kx, k), neighbour_weights(ly, k)
    kk = hsic_unbiased(wx * kx, wx * kx)
    ll = hsic_unbiased(wy * ly, wy * ly)
    if kk <= 0.0 or ll <= 0.0:
        return undefined("CKNNA's normalisation HSIC(K, K) is not positive here")
    value = hsic_unbiased(wx * wy * kx, wx * wy * ly) / math.sqrt(kk * ll)
    if not math.isfinite(value):  # pragma: no cover - the terms above are finite
        raise AssertionError("non-finite CKNNA")
    return value
