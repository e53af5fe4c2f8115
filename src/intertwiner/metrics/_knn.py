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
per row. The Gram matrix is formed whole (symmetric product) up to ``GRAM_BYTES``, beyond that in
blocks of rows (twice the multiply-adds, memory O(block N)); what is kept are the N k (plus ties)
neighbour entries, and CKNNA's HSICs are sums over those sparse entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
#: Largest N x N float64 Gram matrix formed whole (N up to about 11,500).
GRAM_BYTES = 1 << 30


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


def _block_entries(
    s: torch.Tensor, k: int, first_row: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, weights, similarities) of the nonzero neighbour weights of the rows of ``s``
    (similarities of rows ``first_row``.. against all N; overwritten on the diagonal), ties at the
    k-th sharing the places left. Only the few candidates at or above the k-th are touched."""
    b = s.shape[0]
    rows = torch.arange(b)
    s[rows, rows + first_row] = -math.inf  # never one's own neighbour
    kth = torch.topk(s, k, dim=1).values[:, -1]
    r, c = torch.nonzero(s >= (kth - TIE_TOL).unsqueeze(1), as_tuple=True)
    v = s[r, c]
    above = v > kth[r] + TIE_TOL
    zero = torch.zeros(b, dtype=torch.float64)
    n_above = zero.index_add(0, r, above.to(torch.float64))
    n_tied = zero.index_add(0, r, (~above).to(torch.float64))  # the k-th itself is one of them
    share = (k - n_above) / n_tied
    return r, c, torch.where(above, 1.0, share[r]), v


@dataclass(frozen=True)
class Neighbours:
    """The nonzero neighbour weights of one representation as sparse entries, row-major:
    ``key = i * n + j``, weight ``w`` and cosine similarity ``sim`` of inputs i and j."""

    n: int
    key: torch.Tensor
    w: torch.Tensor
    sim: torch.Tensor

    def rows(self) -> torch.Tensor:
        return torch.div(self.key, self.n, rounding_mode="floor")

    def cols(self) -> torch.Tensor:
        return self.key % self.n


def neighbours(u: torch.Tensor, k: int) -> Neighbours:
    """``Neighbours`` of unit rows ``u``: from the whole Gram matrix (a symmetric product: half the
    work) when it fits in ``GRAM_BYTES``, else one block of rows at a time."""
    n = u.shape[0]
    gram = products.gram(u) if n * n * 8 <= GRAM_BYTES else None
    keys, ws, sims = [], [], []
    for i in range(0, n, BLOCK_ROWS):
        if gram is None:
            s = products.matmul(u[i : i + BLOCK_ROWS], u.T)
        else:
            s = gram[i : i + BLOCK_ROWS]
        r, c, w, v = _block_entries(s, k, i)
        keys.append((r + i) * n + c)
        ws.append(w)
        sims.append(v)
    return Neighbours(n, torch.cat(keys), torch.cat(ws), torch.cat(sims))


def _match(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (ia, ib) with a[ia] == b[ib], for ``a`` sorted and unique, ``b`` unique."""
    idx = torch.searchsorted(a, b).clamp(max=max(a.numel() - 1, 0))
    hit = a[idx] == b if a.numel() else torch.zeros_like(b, dtype=torch.bool)
    return idx[hit], torch.nonzero(hit).flatten()


def _overlaps(nx: Neighbours, ny: Neighbours) -> torch.Tensor:
    """o_i = sum_j wX_ij wY_ij for every input i."""
    ia, ib = _match(nx.key, ny.key)
    o = torch.zeros(nx.n, dtype=torch.float64)
    return o.index_add_(0, nx.rows()[ia], nx.w[ia] * ny.w[ib])


def _pair(X: FeatureLike, Y: FeatureLike, k: int, least: int = 1) -> tuple[torch.Tensor, ...]:
    x, y = unit_rows(X, "X"), unit_rows(Y, "Y")
    check_same_n(x, y)
    _check_k(k, x.shape[0], least)
    return x, y


def overlaps(X: FeatureLike, Y: FeatureLike, k: int) -> torch.Tensor:
    """o_i for every input: the (expected) number of shared k nearest neighbours."""
    x, y = _pair(X, Y, k)
    return _overlaps(neighbours(x, k), neighbours(y, k))


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


@dataclass(frozen=True)
class Sparse:
    """An n x n matrix with a zero diagonal as sorted unique row-major keys and values."""

    n: int
    key: torch.Tensor
    val: torch.Tensor

    def transposed_keys(self) -> torch.Tensor:
        return (self.key % self.n) * self.n + torch.div(self.key, self.n, rounding_mode="floor")


def hsic_unbiased(a: Sparse, b: Sparse) -> float:
    """PRH's ``hsic_unbiased`` of two (possibly asymmetric) sparse matrices with zero diagonals:
    [tr(AB) + 1'A1 1'B1 / ((m-1)(m-2)) - 2 1'AB1 / (m-2)] / (m (m-3))."""
    m = a.n
    order = torch.argsort(b.transposed_keys())
    ia, ib = _match(a.key, b.transposed_keys()[order])
    trace = float((a.val[ia] * b.val[order][ib]).sum())  # sum_ij A_ij B_ji
    sums = float(a.val.sum()) * float(b.val.sum()) / ((m - 1) * (m - 2))
    col_a = torch.zeros(m, dtype=torch.float64).index_add_(0, a.key % m, a.val)
    row_b = torch.zeros(m, dtype=torch.float64).index_add_(
        0, torch.div(b.key, m, rounding_mode="floor"), b.val
    )
    return (trace + sums - 2.0 * float(col_a @ row_b) / (m - 2)) / (m * (m - 3))


def _round_off(a: Sparse) -> float:
    """What cancellation leaves of a zero HSIC(A, A): its largest term, (1'|A|1)^2 / ((m-1)(m-2)),
    over m (m - 3), times 1e-10 (a constant kernel gives 0 up to this)."""
    m = a.n
    return 1e-10 * float(a.val.abs().sum()) ** 2 / ((m - 1) * (m - 2) * m * (m - 3))


@measure("orthogonal", (-math.inf, math.inf))
def cknna(X: FeatureLike, Y: FeatureLike, k: int = 10) -> float:
    """CKNNA (PRH): CKA restricted to mutual k-NN pairs (cosine kernels, unbiased HSIC).

    X, Y: any layouts over the same N inputs, N >= 4 and 2 <= k <= N - 1. Not bounded in general
    (see the module; near [-1, 1] in practice; 1 at X = Y); invariant to orthogonal maps.
    """
    x, y = _pair(X, Y, k, least=2)
    if x.shape[0] < 4:
        raise TooFewSamplesError(f"CKNNA (unbiased HSIC) needs at least 4 inputs, got {x.shape[0]}")
    nx, ny = neighbours(x, k), neighbours(y, k)
    n = nx.n
    a, b = Sparse(n, nx.key, nx.w * nx.sim), Sparse(n, ny.key, ny.w * ny.sim)
    kk, ll = hsic_unbiased(a, a), hsic_unbiased(b, b)
    if kk <= _round_off(a) or ll <= _round_off(b):
        return undefined("CKNNA's normalisation HSIC(K, K) is not positive here")
    ia, ib = _match(nx.key, ny.key)  # pairs that are neighbours in both
    mask = nx.w[ia] * ny.w[ib]
    both = nx.key[ia]
    kl = hsic_unbiased(Sparse(n, both, mask * nx.sim[ia]), Sparse(n, both, mask * ny.sim[ib]))
    value = kl / math.sqrt(kk * ll)
    if not math.isfinite(value):  # pragma: no cover - the terms above are finite
        raise AssertionError("non-finite CKNNA")
    return value
