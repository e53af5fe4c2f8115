"""Generalised shape metrics (Williams et al. 2021, netrep) and the soft-matching distance
(Khosla & Williams 2023). Rows are sample positions, columns neurons (see ``_moments``); columns are
centred (translations are quotiented out, as in netrep's default ``center_columns=True``).

**Shape distance, orthogonal group** (netrep's ``LinearMetric``). Each side is partially whitened,
X -> X Z_alpha with Z_alpha = alpha I + (1 - alpha) S^(-1/2) (netrep's ``whiten``: the eigenvalues
of the whitening matrix interpolate between 1 and lambda^(-1/2)), then aligned by the best
orthogonal map. netrep's S is X'X as given, so its alpha family depends on the scale of X and on
the number of rows; ours takes S = X'X divided by its mean eigenvalue (tr(X'X) / p), which makes
it scale-free, and equals netrep's value on inputs so normalised. Eigenvalues below ``REL_TOL``
of the largest are absent directions (Z is 0 there, not round-off times 1e8). With the whitened
matrices X~, Y~, cos = ||X~'Y~||_* / (||X~|| ||Y~||):

- ``score="angular"``: arccos(cos), in [0, pi/2] (the metric of Williams et al.);
- ``score="euclidean"``: || X~/|X~| - Y~/|Y~| Q* ||_F = sqrt(2 - 2 cos), in [0, sqrt(2)]
  (netrep's Euclidean score is unnormalised, hence not scale-free; this is its normalised form).

alpha = 1 is orthogonal Procrustes (invariant to O(n)); alpha = 0 whitens fully and gives
arccos(sum rho_i / sqrt(rank X rank Y)), a CCA distance (invariant to GL); in between, O(n).

**Shape distance modulo a monomial group** (``group="positive_monomial"`` etc.; the G_ReLU shape
metric): whitening is replaced by its per-neuron form, each neuron scaled by alpha + (1 - alpha) /
sigma_j (sigma_j^2 its variance over the mean variance), and the alignment is the project's
Procrustes modulo that group on the centred neurons (``procrustes_distance(center=True)``). Free-
scale families (positive_monomial, monomial) unit-normalise each neuron there, so alpha has no
effect for them. Invariant to the group; range as ``procrustes_distance``: [0, pi] angular, [0, 2]
euclidean (a neuron that cannot be flipped can be anti-correlated).

**Soft-matching distance** (Khosla & Williams 2023): neurons are points (their centred responses
over the M positions), each side scaled so that its mean squared neuron norm is 1 (scale-free), and
the distance is sqrt(min_P sum_ij P_ij |x_i - y_j|^2) over transport plans with uniform marginals
1/p and 1/q: an exact optimal transport (an assignment when p = q, or on lcm(p, q) replicated
neurons when that is at most ``MAX_REPLICATED``, else scipy's linear program). Invariant to
permutations; range [0, 2] (Cauchy-Schwarz on the cross term). A constant side (no scale) warns and
counts as zero neurons: distance 1 to any other representation, 0 to another constant one.

Floors: the moment products (``_moments``) plus O(p^3 + q^3) (orthogonal: eigen- and singular value
decompositions; soft matching: the assignment on the p x q cost).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import coo_matrix

from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError
from intertwiner.groups import GENERAL_LINEAR, ORTHOGONAL, GroupLike, family
from intertwiner.metrics import procrustes as _pr
from intertwiner.metrics._cca import REL_TOL
from intertwiner.metrics._groups import family_name
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import (
    CrossMoments,
    centred,
    check_choice,
    cross_moments,
    position_rows,
)

SCORES = ("angular", "euclidean")
#: Ranges of the orthogonal shape distance per score.
SHAPE_RANGE = {"angular": (0.0, math.pi / 2), "euclidean": (0.0, math.sqrt(2.0))}
SOFT_RANGE = (0.0, 2.0)
#: Largest lcm(p, q) solved as an assignment on replicated neurons (an lcm^2 cost matrix).
MAX_REPLICATED = 2048


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise InvalidOptionError(f"alpha must be in [0, 1] (0: CCA, 1: Procrustes), got {alpha!r}")
    return float(alpha)


def _partial_whitener(s: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Z_alpha for centred moments ``s`` normalised to mean eigenvalue 1; None if constant."""
    total = float(s.trace())
    if total <= 0.0:
        return None
    if alpha == 1.0:  # no whitening: any multiple of I gives the same distance
        return torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    lam, v = torch.linalg.eigh(s / (total / s.shape[0]))
    keep = lam > REL_TOL * lam.max()
    d = torch.where(keep, alpha + (1.0 - alpha) * lam.clamp_min(1e-300).rsqrt(), 0.0)
    return (v * d) @ v.T


def shape_cosine(m: CrossMoments, alpha: float) -> float | None:
    """cos of the orthogonal shape angle from moments; None when a side is constant."""
    zx, zy = _partial_whitener(m.xx, alpha), _partial_whitener(m.yy, alpha)
    if zx is None or zy is None:
        return None
    nuclear = float(torch.linalg.svdvals(zx.T @ m.xy @ zy).sum())
    nx = float((zx * (m.xx @ zx)).sum())
    ny = float((zy * (m.yy @ zy)).sum())
    return clip(nuclear / math.sqrt(nx * ny), 0.0, 1.0)


def shape_from_moments(m: CrossMoments, alpha: float = 1.0, score: str = "angular") -> float:
    check_choice(score, "score", SCORES)
    m.require(2, "the shape distance")
    cos = shape_cosine(m, _check_alpha(alpha))
    if cos is None:  # nothing to align: documented as orthogonal shapes (cos 0)
        cos = undefined("the shape distance of a constant representation is undefined", 0.0)
    if score == "angular":
        return math.acos(cos)
    return math.sqrt(max(2.0 - 2.0 * cos, 0.0))


def _per_neuron_scaled(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Centred (positions, neurons) float64 matrix with neuron j scaled by alpha + (1-alpha)/sigma_j."""
    c = centred(x)
    var = (c * c).mean(0)
    mean_var = float(var.mean())
    if mean_var <= 0.0 or alpha == 1.0:
        return c
    rel = var / mean_var
    d = torch.where(rel > REL_TOL, alpha + (1.0 - alpha) * rel.clamp_min(1e-300).rsqrt(), 0.0)
    return c * d


def shape_group(group: GroupLike) -> str:
    """The family a shape distance quotients out: orthogonal or a monomial family."""
    name = family_name(group)
    fam = family(name)
    if fam.monomial and not fam.any_permutation:
        raise InvalidOptionError(
            f"shape_distance matches units by any permutation; {name} allows two orders only: "
            "use group='permutation'"
        )
    if fam is not ORTHOGONAL and not fam.monomial:
        raise InvalidOptionError(
            f"shape_distance supports the orthogonal group and the monomial families, not "
            f"{name!r}; for GL use alpha=0 (full whitening), which is invariant to GL"
        )
    return name


@measure("orthogonal", SHAPE_RANGE["angular"], higher_is_similar=False)
def shape_distance(
    X: FeatureLike,
    Y: FeatureLike,
    alpha: float = 1.0,
    *,
    score: str = "angular",
    group: GroupLike = "orthogonal",
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """netrep's generalised shape metric: partial whitening with ``alpha`` (0: CCA, 1: Procrustes),
    then the best alignment in ``group`` (orthogonal, or a monomial family such as
    ``"positive_monomial"``, the G_ReLU shape metric); see the module for the conventions.

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same inputs; rows are sample positions.
    Range: orthogonal [0, pi/2] angular, [0, sqrt(2)] euclidean; monomial families as
    ``procrustes_distance``. Invariant to ``shape_invariance(alpha, group)``. A constant side (no
    shape) warns and counts as orthogonal to everything: pi/2 angular, sqrt(2) euclidean.
    """
    g = shape_group(group)
    check_choice(score, "score", SCORES)
    a = _check_alpha(alpha)
    if not family(g).monomial:  # orthogonal: partial whitening and the best rotation
        return shape_from_moments(cross_moments(X, Y, upsample=upsample, layout=layout), a, score)
    x, y = position_rows(X, Y, upsample=upsample, layout=layout)
    xs, ys = _per_neuron_scaled(x, a), _per_neuron_scaled(y, a)
    return _pr.procrustes_distance(xs, ys, group=g, kind=score)


def shape_invariance(alpha: float = 1.0, group: GroupLike = "orthogonal") -> str:
    """The family a shape distance with these options is invariant to."""
    g = shape_group(group)
    if not family(g).monomial and _check_alpha(alpha) == 0.0:  # full whitening quotients out GL
        return GENERAL_LINEAR.name
    return g


def moment_form(group: GroupLike = "orthogonal") -> bool:
    """Whether the shape distance for ``group`` comes from second moments (it streams)."""
    return not family(shape_group(group)).monomial


def shape_range(score: str = "angular", group: GroupLike = "orthogonal") -> tuple[float, float]:
    check_choice(score, "score", SCORES)
    if not family(shape_group(group)).monomial:
        return SHAPE_RANGE[score]
    return _pr.DISTANCE_RANGE[score]


def transport_cost(cost: np.ndarray) -> float:
    """min_P <P, cost> over plans with uniform marginals 1/p (rows) and 1/q (columns), exactly."""
    p, q = cost.shape
    lcm = p * q // math.gcd(p, q)
    if lcm <= MAX_REPLICATED:
        big = np.repeat(np.repeat(cost, lcm // p, axis=0), lcm // q, axis=1)
        rows, cols = linear_sum_assignment(big)
        return float(big[rows, cols].sum() / lcm)
    n = p * q
    i = np.arange(n)
    a_eq = coo_matrix(
        (np.ones(2 * n), (np.concatenate([i // q, p + i % q]), np.concatenate([i, i]))),
        shape=(p + q, n),
    )
    b_eq = np.concatenate([np.full(p, 1.0 / p), np.full(q, 1.0 / q)])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if res.status != 0:  # pragma: no cover - HiGHS solves every feasible transport problem
        raise RuntimeError(f"optimal transport failed: {res.message}")
    return float(res.fun)


def soft_matching_from_moments(m: CrossMoments) -> float:
    m.require(2, "the soft-matching distance")
    sx, sy = m.xx.diagonal(), m.yy.diagonal()
    p, q = sx.shape[0], sy.shape[0]
    tx, ty = float(sx.sum()) / p, float(sy.sum()) / q
    if tx <= 0.0 or ty <= 0.0:  # a constant side: its centred neurons are zero vectors
        warnings.warn(
            "soft matching: a constant representation has no scale; its neurons count as zero",
            RuntimeWarning,
            stacklevel=3,
        )
        tx, ty = tx or 1.0, ty or 1.0
    cost = sx[:, None] / tx + sy[None, :] / ty - 2.0 * m.xy / math.sqrt(tx * ty)
    return clip(math.sqrt(max(transport_cost(cost.clamp_min(0.0).numpy()), 0.0)), *SOFT_RANGE)


@measure("permutation", SOFT_RANGE, higher_is_similar=False)
def soft_matching_distance(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> float:
    """Soft-matching distance (Khosla & Williams 2023): optimal transport between the neurons of X
    and Y (uniform weights; any widths), each side scaled to unit mean squared neuron norm.

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same inputs; rows are sample positions. Range
    [0, 2]; invariant to permutations of the neurons.
    """
    return soft_matching_from_moments(cross_moments(X, Y, upsample=upsample, layout=layout))
