"""Procrustes distances modulo a group acting on the neuron axis.

Features become (rows, neurons) matrices with ``to_matrix`` (conv: one row per image and pixel), so
X and Y need the same rows: same inputs, same spatial size (``upsample=True`` upsamples the smaller
map by nearest neighbour, as the paper does). Differing neuron counts are zero-padded to the larger
one, as the paper does. Nothing is centred unless ``center=True`` (the paper does not centre).

Everything reduces to the neuron cross matrix M = X'Y and the neuron norms:

- ``orthogonal``: best alignment = nuclear norm of M (SVD).
- ``permutation``: optimal assignment (Hungarian) maximising sum_i M[i, pi(i)].
- ``signed_permutation`` (tanh): assignment on |M|, each matched pair taking the sign of M.
- ``positive_monomial`` (G_ReLU): each neuron unit-normalised first (this quotients out the
  positive scales), then a permutation assignment; the paper's G_ReLU-Procrustes.
- ``monomial``: unit-normalised neurons, then a signed assignment.

With X^, Y^ the normalised matrices (unit Frobenius norm; monomial groups: unit neurons, then unit
Frobenius norm) and g* the best group element, ``procrustes_distance`` is

- ``kind="angular"`` (default): arccos <X^, Y^ g*> in [0, pi] (a metric on orbits);
- ``kind="euclidean"``: |X^ - Y^ g*|_F = sqrt(2 - 2 cos) in [0, 2].

``procrustes_similarity`` is the paper's number: 1 - d with d = 1/2 sqrt(2 - 2 |X^'Y^|_*) for
orthogonal (and the other isometry groups) and d = sqrt(d^2 / (4 C)) with d^2 = |H1^|^2 + |H2^|^2 -
2 sum_i C_{i pi(i)} for G_ReLU (C = padded neuron count; dead neurons count as zero vectors).
Without dead or padded neurons it equals 1 - procrustes_distance(kind="euclidean") / 2.

Ranges (``similarity_range(group)``): [1 - sqrt(2)/2, 1] for the groups that can flip signs
(orthogonal, signed_permutation, monomial), whose best alignment is never negative. For
``permutation`` and ``positive_monomial`` a neuron cannot be flipped, so anti-correlated neurons
(possible for centred or signed features, not for ReLU outputs without centring) give a negative
alignment and the similarity reaches down to 0 (X = -Y). Distances: angular in [0, pi], euclidean
in [0, 2].

Scale: every quantity here is invariant to scaling X or Y (and, for the monomial groups, to scaling
each neuron). Inputs are multiplied by powers of two (per neuron for the monomial groups) that bring
their largest magnitudes near 1 before anything is squared, so 1e-300 and 1e300 give the values of 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from intertwiner import _validate
from intertwiner.errors import InvalidOptionError, NonFiniteError, UnsupportedGroupError
from intertwiner.metrics._groups import declare, family_name, subgroups
from intertwiner.metrics._prep import (
    check_finite,
    f64,
    match_positions,
    scale_exponent,
    times_power_of_two,
    to_matrix,
    validate,
)
from intertwiner.metrics.cka import CONSTANT_RATIO

GROUPS = ("orthogonal", "permutation", "signed_permutation", "positive_monomial", "monomial")
_PER_NEURON = {"positive_monomial", "monomial"}
_SIGNED = {"signed_permutation", "monomial"}
KINDS = ("angular", "euclidean")
_SIGN_FREE = {"permutation", "positive_monomial"}
#: Value ranges: of the distance per kind, of the similarity per group.
DISTANCE_RANGE = {"angular": (0.0, math.pi), "euclidean": (0.0, 2.0)}


def similarity_range(group: Any = "orthogonal") -> tuple[float, float]:
    """[1 - sqrt(2)/2, 1] for groups that flip signs; [0, 1] for permutation and G_ReLU, which
    cannot undo an anti-correlated neuron (see the module docstring)."""
    return (0.0, 1.0) if procrustes_group(group) in _SIGN_FREE else (1.0 - math.sqrt(0.5), 1.0)


def procrustes_group(group: Any) -> str:
    """The family a Procrustes metric quotients out; a clear error for GL."""
    name = family_name(group)
    if name == "general_linear":
        raise UnsupportedGroupError(
            "Procrustes modulo GL(n) is degenerate (any full-rank representations align); the "
            "identity activation's group is GL(n), so compare such layers with cka(...) "
            "(invariant to orthogonal maps) or a CCA-type similarity instead"
        )
    if name not in GROUPS:
        raise UnsupportedGroupError(f"no Procrustes metric for group {name!r}; use one of {GROUPS}")
    return name


def invariant_families(group: Any) -> tuple[str, ...]:
    """Families a Procrustes metric for ``group`` is invariant to (the group and its subgroups)."""
    return subgroups(procrustes_group(group))


@dataclass
class ProcrustesStats:
    """Additive sufficient statistics: M = X'Y, neuron sums of squares, row count; with
    ``centering=True`` also neuron sums, all taken on rows shifted by the first batch's mean
    (centring is shift invariant, and the shift keeps round-off small)."""

    centering: bool = False
    per_neuron: bool = False
    n: int = 0
    exps: tuple[torch.Tensor, torch.Tensor] | None = None
    gxy: torch.Tensor | None = None
    xsq: torch.Tensor | None = None
    ysq: torch.Tensor | None = None
    xsum: torch.Tensor | None = None
    ysum: torch.Tensor | None = None
    raw_xsq: torch.Tensor | None = None
    raw_ysq: torch.Tensor | None = None
    shift: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows of x (b, p) and y (b, q), float64 (finiteness is checked here, cheaply).

        The first batch fixes power-of-two scales (one per side, or one per neuron with
        ``per_neuron=True``: the metric is invariant to them) that keep squares in range."""
        if self.exps is None:  # also checks the first batch for NaN/Inf
            self.exps = (
                scale_exponent(x, self.per_neuron, "X"),
                scale_exponent(y, self.per_neuron, "Y"),
            )
        x0, y0 = x, y
        x, y = times_power_of_two(x, self.exps[0]), times_power_of_two(y, self.exps[1])
        xsq = torch.linalg.vector_norm(x, dim=0).square()
        ysq = torch.linalg.vector_norm(y, dim=0).square()
        _check_finite_via_norms(x0, xsq, "X")
        _check_finite_via_norms(y0, ysq, "Y")
        if self.centering:
            if self.shift is None:
                self.shift = (x.mean(0), y.mean(0))
                self.raw_xsq, self.raw_ysq = torch.zeros_like(xsq), torch.zeros_like(ysq)
            self.raw_xsq += xsq
            self.raw_ysq += ysq
            x, y = x - self.shift[0], y - self.shift[1]
            xsq = torch.linalg.vector_norm(x, dim=0).square()
            ysq = torch.linalg.vector_norm(y, dim=0).square()
        parts = [x.T @ y, xsq, ysq]
        if self.centering:
            parts += [x.sum(0), y.sum(0)]
        if self.gxy is None:
            self.gxy, self.xsq, self.ysq = parts[:3]
            if self.centering:
                self.xsum, self.ysum = parts[3:]
        else:
            self.gxy += parts[0]
            self.xsq += parts[1]
            self.ysq += parts[2]
            if self.centering:
                self.xsum += parts[3]
                self.ysum += parts[4]
        self.n += x.shape[0]

    def _centred(self, center: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if center != self.centering:
            raise InvalidOptionError(
                f"these statistics were gathered with centering={self.centering}"
            )
        if not center:
            return self.gxy, self.xsq, self.ysq
        n = self.n

        def centred_sq(sq: torch.Tensor, total: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
            c = sq - total.square() / n
            # A constant neuron leaves only rounding noise: make it exactly zero (a dead neuron).
            return torch.where(c <= CONSTANT_RATIO * raw, torch.zeros_like(c), c)

        return (
            self.gxy - torch.outer(self.xsum, self.ysum) / n,
            centred_sq(self.xsq, self.xsum, self.raw_xsq),
            centred_sq(self.ysq, self.ysum, self.raw_ysq),
        )

    def alignment(self, group: str, center: bool = False) -> tuple[float, float, float, int]:
        """(best <X, Y g>, |X|^2, |Y|^2, padded width) after per-neuron normalisation if needed."""
        m, xsq, ysq = self._centred(center)
        width = max(m.shape)
        if group in _PER_NEURON:
            # Unit-normalise each neuron; dead (zero) neurons stay zero vectors instead of NaN.
            xn, yn = xsq.sqrt(), ysq.sqrt()
            ix = torch.where(xn > 0, 1.0 / xn.clamp_min(1e-300), torch.zeros_like(xn))
            iy = torch.where(yn > 0, 1.0 / yn.clamp_min(1e-300), torch.zeros_like(yn))
            m = m * ix[:, None] * iy[None, :]
            nx, ny = float((xn > 0).sum()), float((yn > 0).sum())
        else:
            nx, ny = float(xsq.sum()), float(ysq.sum())
        return best_alignment(m, group, width), nx, ny, width


def _check_finite_via_norms(m: torch.Tensor, sq: torch.Tensor, name: str) -> None:
    # NaN/Inf anywhere makes its neuron's sum of squares non-finite: one pass saved on big inputs.
    # Otherwise (rows scaled by the first batch) only a later batch far larger can overflow.
    if bool(torch.isfinite(sq).all()):
        return
    check_finite(m, name)  # raises NonFiniteError naming the bad values
    raise NonFiniteError(
        f"{name}: a batch is so much larger than the first (by more than about 1e150) that its "
        "squares overflow float64; rescale the batches to a common scale"
    )


def best_alignment(m: torch.Tensor, group: str, width: int | None = None) -> float:
    """max over g in the group (zero-padded to ``width``) of <X, Y g> = tr(g' M)-type sums."""
    if group == "orthogonal":
        return float(torch.linalg.svdvals(m).sum())
    width = width or max(m.shape)
    gain = m.abs() if group in _SIGNED else m
    # Pad to square, as the paper zero-pads neurons: a neuron may match a padded one with gain 0.
    g = np.zeros((width, width))
    g[: m.shape[0], : m.shape[1]] = gain.cpu().numpy()
    rows, cols = linear_sum_assignment(g, maximize=True)
    return float(g[rows, cols].sum())


def _degenerate(nx: float, ny: float) -> bool:
    if nx <= 0 or ny <= 0:
        warnings.warn(
            "Procrustes of an all-zero representation is undefined; treating it as orthogonal "
            "to the other (cos = 0)",
            RuntimeWarning,
            stacklevel=4,
        )
        return True
    return False


def distance_from_stats(
    stats: ProcrustesStats, group: str, kind: str = "angular", center: bool = False
) -> float:
    _validate.choice(kind, "kind", KINDS)
    gain, nx, ny, _ = stats.alignment(group, center)
    cos = 0.0 if _degenerate(nx, ny) else min(max(gain / math.sqrt(nx * ny), -1.0), 1.0)
    if kind == "angular":
        return math.acos(cos)
    return math.sqrt(max(2.0 - 2.0 * cos, 0.0))


def similarity_from_stats(stats: ProcrustesStats, group: str, center: bool = False) -> float:
    gain, nx, ny, width = stats.alignment(group, center)
    if group in _PER_NEURON:
        d2 = max(nx + ny - 2.0 * gain, 0.0)
        return 1.0 - math.sqrt(d2 / (4.0 * width))
    cos = 0.0 if _degenerate(nx, ny) else gain / math.sqrt(nx * ny)
    return 1.0 - 0.5 * math.sqrt(max(2.0 - 2.0 * cos, 0.0))


def prepare_rows(
    X: Any, Y: Any, *, upsample: bool = False, layout: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 (rows, neurons) matrices of X and Y with matching rows."""
    # Finiteness is checked by ProcrustesStats.update.
    xt, yt = validate(X, "X", layout, finite=False), validate(Y, "Y", layout, finite=False)
    xt, yt = match_positions(xt, yt, upsample=upsample, layout_x=layout, layout_y=layout)
    return f64(to_matrix(xt, layout)), f64(to_matrix(yt, layout))


def new_stats(group: str, center: bool) -> ProcrustesStats:
    """Empty statistics for ``group`` (per-neuron scaling for the monomial groups)."""
    return ProcrustesStats(centering=center, per_neuron=group in _PER_NEURON)


def _stats(
    X: Any, Y: Any, group: str, upsample: bool, layout: str | None, center: bool
) -> ProcrustesStats:
    x, y = prepare_rows(X, Y, upsample=upsample, layout=layout)
    stats = new_stats(group, center)
    stats.update(x, y)  # unequal widths: best_alignment zero-pads the cross matrix
    return stats


@declare(subgroups("orthogonal"))
def procrustes_distance(
    X: Any,
    Y: Any,
    *,
    group: Any = "orthogonal",
    kind: str = "angular",
    center: bool = False,
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """Procrustes distance between X and Y modulo ``group`` acting on the neuron axis.

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same N inputs. ``group``: a family name in
    ``GROUPS`` or an IntertwinerGroup (mapped to the family of phi(G)). 0 for identical inputs.
    Range: [0, pi] angular, [0, 2] euclidean. Exactly scale-free (1e-300 to 1e300 alike).
    Invariant to the group (see ``invariant_families(group)``); ``.invariant_to`` is for the default.
    """
    g = procrustes_group(group)
    _validate.choice(kind, "kind", KINDS)
    return distance_from_stats(_stats(X, Y, g, upsample, layout, center), g, kind, center)


@declare(subgroups("orthogonal"))
def procrustes_similarity(
    X: Any,
    Y: Any,
    *,
    group: Any = "orthogonal",
    center: bool = False,
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """The paper's Procrustes similarity 1 - d (paper.md section 6).

    Range ``similarity_range(group)``: [1 - sqrt(2)/2, 1] for orthogonal and the signed groups;
    [0, 1] for ``permutation`` and ``positive_monomial`` (anti-correlated neurons cannot be
    flipped; ReLU outputs without centring stay in [1 - sqrt(2)/2, 1]). Exactly scale-free.

    ``group="positive_monomial"`` is the paper's G_ReLU-Procrustes, ``"orthogonal"`` its orthogonal
    Procrustes; the other groups follow the same convention (isometry groups like orthogonal,
    monomial like G_ReLU).
    """
    g = procrustes_group(group)
    return similarity_from_stats(_stats(X, Y, g, upsample, layout, center), g, center)


procrustes_distance.value_range = DISTANCE_RANGE["angular"]
procrustes_similarity.value_range = similarity_range("orthogonal")
