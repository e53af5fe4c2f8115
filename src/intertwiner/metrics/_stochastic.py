"""Stochastic shape metrics (Duong, Zhou, Nassar, Berman, Olieslagers and Williams, ICLR 2023;
netrep's ``GaussianStochasticMetric``): distances between *stochastic* representations, where each
of M conditions (inputs) gives a distribution of responses, summarised by its mean and covariance.

For conditions i = 1..M with means mu_i (C,) and covariances S_i (C, C), the Gaussian shape
distance with ``alpha`` in [0, 2] is

    d_alpha(X, Y)^2 = min_{T in O(C)} (1/M) sum_i [ (2 - alpha) |mu_i^X - T mu_i^Y|^2
                                                    + alpha B^2(S_i^X, T S_i^Y T') ]

with the Bures distance B^2(A, B) = tr A + tr B - 2 tr (A^(1/2) B A^(1/2))^(1/2). alpha = 0 compares
the means only (Procrustes on the conditions' means), alpha = 2 the covariances only, and alpha = 1
is the 2-Wasserstein distance between the per-condition Gaussians (Duong et al., eq. 7 and 8).

Conventions (netrep's defaults, made scale-free):
- Means are centred over conditions (translations are quotiented out).
- Each side is scaled so that (1/M) sum_i [(2 - alpha) |mu_i|^2 + alpha tr S_i] = 1 (netrep's
  value depends on the scale; ours equals it on inputs so normalised). Then d in [0, sqrt(2)]:
  d^2 = 2 - 2 g / M with g >= 0 the maximised cross term below. A side with no scale (every mean
  equal and, for alpha > 0, every covariance zero) warns and counts as the zero representation:
  distance 1 to any other, 0 to another such side.
- Widths may differ: the narrower side is padded with zero neurons (as netrep does).

The minimisation. With A_i = (S_i^X)^(1/2) and B_i = (S_i^Y)^(1/2), tr (A_i T B_i^2 T' A_i)^(1/2) is
the nuclear norm |A_i T B_i|_* = max_{U_i in O(C)} <T, A_i U_i B_i>, so

    g = max_{T, U_1..U_M} < T, (2 - alpha) sum_i mu_i^X mu_i^Y' + alpha sum_i A_i U_i B_i >.

Alternating maximisation (netrep's algorithm): U_i = polar factor of A_i T B_i, then T = polar
factor of the bracket; g never decreases, and it stops when an iteration adds less than ``tol``
(relative). alpha = 0 is a single step (orthogonal Procrustes, exact). Otherwise the problem is
not convex, and local maxima are common (4 neurons, 8 conditions: about one random start in five
reaches the best value): the value is the best over the starts T = polar of the means' cross
product, T = polar of the bracket at U_i = I, and ``n_init`` (default 32) random orthogonal starts
drawn from ``seed``; each is an upper bound on the exact distance, so more starts can only lower
it. ``tests/metrics/test_stochastic_shape.py`` checks it against a brute-force minimisation over
O(2) and its invariance on stochastic inputs. A start that does not converge within ``max_iter``
iterations warns.

Inputs: ``GaussianStats`` (means (M, C), covariances (M, C, C)), a ``(means, covariances)``
tuple, or deterministic features (N, C), (N, C, H, W), (N, T, D) (conditions are the sample
positions, as for ``shape_distance``; covariances zero). Repeated samples (R, M, C) become
``GaussianStats`` by ``gaussian_stats(samples)``: a 3-d tensor is not read as samples here, it is a
token layout. Invariant to orthogonal maps of the neurons (applied to means and covariances alike).
For deterministic features with alpha < 2 it equals ``shape_distance(score="euclidean")``.

Deterministic X and Y take the moment path (``_moments``: X'X, Y'Y, X'Y in blocks of the
features' own layout) and one singular value decomposition. Floor of stochastic inputs: the M (C, C) square roots (eigendecompositions) per side, the (C, C) cross product of the
means, and per iteration M products A_i T B_i with their SVDs: O(M C^3) per iteration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidInputError, InvalidOptionError, ShapeError, TooFewSamplesError
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import CrossMoments, cross_moments, position_rows
from intertwiner.metrics._prep import check_finite, validate

VALUE_RANGE = (0.0, math.sqrt(2.0))


@dataclass(frozen=True)
class GaussianStats:
    """A stochastic representation: per condition, the mean (M, C) and covariance (M, C, C)."""

    means: torch.Tensor
    covariances: torch.Tensor

    def __post_init__(self) -> None:
        m, s = self.means, self.covariances
        if not (isinstance(m, torch.Tensor) and isinstance(s, torch.Tensor)):
            raise InvalidInputError(
                "GaussianStats holds tensors: means (M, C), covariances (M, C, C)"
            )
        if m.dim() != 2 or s.dim() != 3 or s.shape != (m.shape[0], m.shape[1], m.shape[1]):
            raise ShapeError(
                f"GaussianStats needs means (M, C) and covariances (M, C, C), got "
                f"{tuple(m.shape)} and {tuple(s.shape)}"
            )
        if m.shape[0] < 2 or m.shape[1] < 1:
            raise TooFewSamplesError(
                f"a stochastic shape distance needs at least 2 conditions and 1 neuron, got "
                f"means {tuple(m.shape)}"
            )
        check_finite(m, "means")
        check_finite(s, "covariances")
        asym = float((s - s.transpose(1, 2)).abs().max()) if s.numel() else 0.0
        if asym > 1e-6 * float(s.abs().max()):  # more than round-off
            raise InvalidInputError("covariances must be symmetric (C, C) matrices")


def gaussian_stats(samples: Any) -> GaussianStats:
    """``GaussianStats`` of repeated responses ``samples`` (R, M, C): R >= 2 draws of M
    conditions x C neurons; the covariance is the unbiased sample covariance (ddof 1)."""
    x = validate(samples, "samples").to(torch.float64)
    if x.dim() != 3:
        raise ShapeError(f"samples must be (repeats, conditions, neurons), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise TooFewSamplesError(
            f"covariances need at least 2 repeats per condition, got {x.shape[0]}"
        )
    mean = x.mean(0)
    c = x - mean
    cov = torch.einsum("rmi,rmj->mij", c, c) / (x.shape[0] - 1)
    return GaussianStats(mean, 0.5 * (cov + cov.transpose(1, 2)))


Side = tuple[torch.Tensor, torch.Tensor | None]


def _side(x: Any, rows: torch.Tensor | None) -> Side:
    """(means, covariances or None for deterministic features: no (M, C, C) zeros are made)."""
    if isinstance(x, tuple) and not isinstance(x, GaussianStats):
        x = GaussianStats(*(torch.as_tensor(t) for t in x))
    if isinstance(x, GaussianStats):
        return x.means, x.covariances
    assert rows is not None  # callers pass the rows of every tensor input
    if rows.shape[0] < 2:
        raise TooFewSamplesError(
            f"a stochastic shape distance needs at least 2 conditions, got {rows.shape[0]}"
        )
    return rows, None


def _padded(side: Side, width: int) -> Side:
    """float64 means and covariances, zero-padded to ``width`` neurons."""
    m, c = side[0].to(torch.float64), side[1]
    if c is not None:
        c = c.to(torch.float64)
        c = 0.5 * (c + c.transpose(1, 2))  # symmetric up to round-off (checked): exactly so
    extra = width - m.shape[1]
    if extra:
        m = torch.nn.functional.pad(m, (0, extra))
        c = None if c is None else torch.nn.functional.pad(c, (0, extra, 0, extra))
    return m, c


def _sqrtm(c: torch.Tensor) -> torch.Tensor:
    """Batched symmetric PSD square roots (negative round-off eigenvalues set to 0)."""
    lam, v = torch.linalg.eigh(c)
    if bool((lam.amin(-1) < -1e-8 * lam.amax(-1).clamp_min(0.0)).any()):
        raise InvalidInputError(
            "covariances must be positive semi-definite (a negative eigenvalue beyond round-off)"
        )
    return (v * lam.clamp_min(0.0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def _normalised(side: Side, alpha: float) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Centred means and covariance square roots (None: deterministic, or alpha = 0) scaled to
    unit total; the total before."""
    m, c = side
    m = m - m.mean(0, keepdim=True)
    # largest magnitudes near 1 first: sums of squares stay clear of under- and overflow
    peak = float(m.abs().max())
    if c is not None:
        peak = max(peak, math.sqrt(float(c.diagonal(dim1=1, dim2=2).abs().max())))
    if peak > 0:
        e = -math.frexp(peak)[1]
        m = torch.ldexp(m, torch.tensor(e))
        c = None if c is None else torch.ldexp(c, torch.tensor(2 * e))
    root = _sqrtm(c) if alpha > 0 and c is not None else None
    total = (2.0 - alpha) * float((m * m).sum())
    if root is not None:
        total += alpha * float((root * root).sum())
    total /= m.shape[0]
    if total <= 0.0:
        return m, root, 0.0
    k = 1.0 / math.sqrt(total)
    return m * k, None if root is None else root * k, total


def _polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor(s) of ``a`` (batched): U V' for a = U S V'."""
    u, _, vh = torch.linalg.svd(a)
    return u @ vh


def _maximise(
    cross: torch.Tensor,
    ax: torch.Tensor,
    by: torch.Tensor,
    alpha: float,
    start: torch.Tensor,
    max_iter: int,
    tol: float,
) -> tuple[float, bool]:
    """max over T (from ``start``) and U_i of <T, cross + alpha sum_i A_i U_i B_i>: (g, converged)."""
    t = start
    prev = -math.inf
    for _ in range(max_iter):
        inner = ax @ t @ by  # (M, C, C): A_i T B_i
        u = _polar(inner)
        g = float((2.0 - alpha) * (t * cross).sum()) + alpha * float(
            torch.linalg.svdvals(inner).sum()
        )
        if g - prev <= tol * max(abs(g), 1e-300):
            return g, True
        prev = g
        t = _polar((2.0 - alpha) * cross + alpha * (ax @ u @ by).sum(0))
    return prev, False


def _check(alpha: Any, max_iter: Any, tol: Any, n_init: Any) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 2.0):
        raise InvalidOptionError(
            f"alpha must be in [0, 2] (0: means only, 1: 2-Wasserstein, 2: covariances only), "
            f"got {alpha!r}"
        )
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise InvalidOptionError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise InvalidOptionError(f"tol must be >= 0, got {tol!r}")
    if not (isinstance(n_init, int) and n_init >= 0):
        raise InvalidOptionError(f"n_init must be an int >= 0, got {n_init!r}")
    return float(alpha)


def _deterministic(m: CrossMoments, alpha: float) -> float:
    """Both sides deterministic (zero covariances): sqrt(2 - 2 |X'Y|_* / (|X| |Y|)) for centred
    X, Y (the (2 - alpha) weights cancel in the normalisation), or the no-spread conventions."""
    m.require(2, "a stochastic shape distance")
    tx, ty = float(m.xx.trace()), float(m.yy.trace())
    if alpha == 2.0 or tx <= 0.0 or ty <= 0.0:
        same = alpha == 2.0 or (tx <= 0.0 and ty <= 0.0)
        return undefined(
            "stochastic shape distance: a representation with no spread (under this alpha) "
            "counts as zero", 0.0 if same else 1.0,
        )  # fmt: skip
    cos = clip(float(torch.linalg.svdvals(m.xy).sum()) / math.sqrt(tx * ty), 0.0, 1.0)
    return clip(math.sqrt(max(2.0 - 2.0 * cos, 0.0)), *VALUE_RANGE)


@measure("orthogonal", VALUE_RANGE, higher_is_similar=False)
def stochastic_shape_distance(
    X: GaussianStats | tuple | FeatureLike,
    Y: GaussianStats | tuple | FeatureLike,
    alpha: float = 1.0,
    *,
    n_init: int = 32,
    seed: int = 0,
    max_iter: int = 500,
    tol: float = 1e-12,
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """The Gaussian stochastic shape distance of Duong et al. 2023 (netrep's
    ``GaussianStochasticMetric``), scale-free; see the module for the conventions.

    X, Y: ``GaussianStats`` (``gaussian_stats(samples)`` for repeats (R, M, C)), ``(means,
    covariances)`` tuples, or deterministic features (N, C), (N, C, H, W), (N, T, D) over the same
    conditions. ``alpha`` in [0, 2]: 0 means only, 1 the 2-Wasserstein distance, 2 covariances
    only. Range [0, sqrt(2)]; invariant to orthogonal maps of the neurons.
    """
    a = _check(alpha, max_iter, tol, n_init)
    tensors = [not isinstance(v, (GaussianStats, tuple)) for v in (X, Y)]
    rows: list[torch.Tensor | None] = [None, None]
    if all(tensors):  # deterministic: the Euclidean shape distance, from the second moments
        return _deterministic(cross_moments(X, Y, upsample=upsample, layout=layout), a)
    else:
        rows = [position_rows(v, v, layout=layout)[0] if t else None
                for v, t in zip((X, Y), tensors, strict=True)]  # fmt: skip
    sx, sy = _side(X, rows[0]), _side(Y, rows[1])
    if sx[0].shape[0] != sy[0].shape[0]:
        raise ShapeError(
            f"X has {sx[0].shape[0]} conditions and Y has {sy[0].shape[0]}: both must come "
            "from the same inputs, in the same order"
        )
    width = max(sx[0].shape[1], sy[0].shape[1])
    mx, ax, tx = _normalised(_padded(sx, width), a)
    my, by, ty = _normalised(_padded(sy, width), a)
    if tx == 0.0 or ty == 0.0:
        return undefined(
            "stochastic shape distance: a representation with no spread (under this alpha) "
            "counts as zero", 0.0 if tx == ty else 1.0,
        )  # fmt: skip
    n = mx.shape[0]
    cross = mx.T @ my
    if ax is None or by is None:  # alpha = 0 or a deterministic side: Procrustes, exact
        g = (2.0 - a) * float(torch.linalg.svdvals(cross).sum())
    else:
        gen = torch.Generator().manual_seed(int(seed))
        starts = [_polar(cross), _polar((2.0 - a) * cross + a * (ax @ by).sum(0))]
        starts += [_polar(torch.randn(width, width, generator=gen, dtype=torch.float64))
                   for _ in range(n_init)]  # fmt: skip
        results = [_maximise(cross, ax, by, a, s, max_iter, tol) for s in starts]
        if not all(ok for _, ok in results):
            warnings.warn(
                f"stochastic_shape_distance: the alternating maximisation did not converge "
                f"within max_iter={max_iter} from every start; the value is an upper bound",
                RuntimeWarning,
                stacklevel=2,
            )
        g = max(v for v, _ in results)
    return clip(math.sqrt(max(2.0 - 2.0 * g / n, 0.0)), *VALUE_RANGE)
