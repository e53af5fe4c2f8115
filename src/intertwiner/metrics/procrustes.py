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
- ``scaled_permutation`` (c P): the permutation assignment; the common factor c is quotiented out
  by the unit Frobenius norms below, so the value equals the permutation one.

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

Floor: the float64 product X'Y over (positions, C) plus the C x C group step (singular values or
one assignment). Dense and token features are multiplied as they are (views); conv features block by
block in their own layout, each cache-sized block copied neuron-major once (never a channels-last
copy of the whole tensor); float32 features are widened to float64 per block. Neuron norms come from
the same blocks. ``center=True`` adds one centred float64 copy.

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

from intertwiner import _products as products
from intertwiner import _validate
from intertwiner._paired import PairedMoments
from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError, NonFiniteError, UnsupportedGroupError
from intertwiner.groups import (
    FAMILIES,
    GENERAL_LINEAR,
    ORTHOGONAL,
    GroupLike,
    family,
)
from intertwiner.layouts import (
    block_samples,
    copies,
    infer,
    n_positions,
    neuron_blocks,
    neuron_dim,
    to_matrix,
    width,
)
from intertwiner.metrics._groups import declare, family_name, invariances
from intertwiner.metrics._prep import (
    check_finite,
    f64,
    match_positions,
    scale_exponent,
    times_outer_power_of_two,
    times_power_of_two,
    validate,
    within,
)
from intertwiner.metrics.cka import CONSTANT_RATIO

# Every family but GL: orthogonal first, then the monomial families. Not the reversal {I, J}:
# representations of different widths are zero-padded, and reversing a padded width is no
# symmetry of the narrower one (``procrustes_group`` refuses it).
GROUPS = (
    ORTHOGONAL.name,
    *(f.name for f in FAMILIES.values() if f.monomial and f.any_permutation),
)
KINDS = ("angular", "euclidean")


def _per_neuron(group: str) -> bool:
    """Families with free per-neuron scales: the statistics are kept per neuron."""
    return family(group).free_scales


def _sign_free(group: str) -> bool:
    """Families that cannot flip a neuron's sign (permutation, G_ReLU)."""
    return family(group).monomial and not family(group).flips_signs


#: Value ranges: of the distance per kind, of the similarity per group.
DISTANCE_RANGE = {"angular": (0.0, math.pi), "euclidean": (0.0, 2.0)}


def similarity_range(group: GroupLike = "orthogonal") -> tuple[float, float]:
    """[1 - sqrt(2)/2, 1] for groups that flip signs; [0, 1] for permutation and G_ReLU, which
    cannot undo an anti-correlated neuron (see the module docstring)."""
    return (0.0, 1.0) if _sign_free(procrustes_group(group)) else (1.0 - math.sqrt(0.5), 1.0)


def procrustes_group(group: GroupLike) -> str:
    """The family a Procrustes metric quotients out; a clear error for GL."""
    name = family_name(group)
    if family(name) is GENERAL_LINEAR:
        raise UnsupportedGroupError(
            "Procrustes modulo GL(n) is degenerate (any full-rank representations align); the "
            "identity activation's group is GL(n), so compare such layers with cka(...) "
            "(invariant to orthogonal maps) or a CCA-type similarity instead"
        )
    if name not in GROUPS:
        raise UnsupportedGroupError(f"no Procrustes metric for group {name!r}; use one of {GROUPS}")
    return name


def invariant_families(group: GroupLike) -> tuple[str, ...]:
    """Families a Procrustes metric for ``group`` is invariant to (the group, its subgroups, c P)."""
    return invariances(procrustes_group(group))


@dataclass
class ProcrustesStats:
    """Additive sufficient statistics: M = X'Y, neuron sums of squares, row count; with
    ``centering=True`` also neuron sums, all taken on rows shifted by the first batch's mean
    (centring is shift invariant, and the shift keeps round-off small). The sums live in the
    one paired-moment accumulator (``intertwiner._paired.PairedMoments``, diagonal forms)."""

    centering: bool = False
    per_neuron: bool = False
    exps: tuple[torch.Tensor, torch.Tensor] | None = None
    sums: PairedMoments | None = None
    raw_xsq: torch.Tensor | None = None
    raw_ysq: torch.Tensor | None = None
    #: The accumulator's own tensors under their Procrustes names (views, updated in place):
    #: X'Y, the neuron sums of squares and, centring, the neuron sums.
    gxy: torch.Tensor | None = None
    xsq: torch.Tensor | None = None
    ysq: torch.Tensor | None = None
    xsum: torch.Tensor | None = None
    ysum: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return 0 if self.sums is None else self.sums.n

    def update(self, x: torch.Tensor, y: torch.Tensor, layout: str | None = None) -> None:
        """Add the positions of x and y: features in their own layout ((N, C), (N, C, H, W) or
        (N, T, D), any float dtype) with matching positions.

        The first batch fixes power-of-two scales (one per side, or one per neuron with
        ``per_neuron=True``: the metric is invariant to them) that keep squares in range. Ordinary
        features are multiplied as they are, block by block in their own layout, and the scales
        applied to the (C_x, C_y) results afterwards (exact: powers of two). Features near the
        ends of float64's range are scaled first (a float64 copy) and then multiplied the same
        way, so both give bit-identical values; ``centering`` takes the path through centred
        float64 copies of the (positions, neurons) matrices.
        """
        if self.centering:
            self._update_rows(f64(to_matrix(x, layout)), f64(to_matrix(y, layout)))
            return
        m, xsq, ysq = _raw_products(x, y, layout)
        ex = _raw_exponents(x, xsq, self.per_neuron, layout)
        ey = _raw_exponents(y, ysq, self.per_neuron, layout)
        if ex is None or ey is None:  # scale copies first: the raw products lost range
            if self.exps is None:  # also checks the first batch for NaN/Inf
                self.exps = (
                    _peak_exponents(x, self.per_neuron, layout, "X"),
                    _peak_exponents(y, self.per_neuron, layout, "Y"),
                )
            xs = _scaled_copy(x, self.exps[0], layout)
            ys = _scaled_copy(y, self.exps[1], layout)
            m, xsq, ysq = _raw_products(xs, ys, layout)
        else:
            if self.exps is None:
                self.exps = (ex, ey)
            ex, ey = self.exps
            m = (
                times_outer_power_of_two(m, ex, ey)
                if self.per_neuron
                else times_power_of_two(m, ex + ey)
            )
            xsq, ysq = times_power_of_two(xsq, 2 * ex), times_power_of_two(ysq, 2 * ey)
        _check_finite_via_norms(x, xsq, "X")
        _check_finite_via_norms(y, ysq, "Y")
        # the products were walked in the features' own layout: add them as sums
        self._sums_for(m.shape, m.device).add(x.shape[0] * n_positions(x, layout), xsq, ysq, m)

    def _sums_for(self, widths: tuple[int, ...], device: torch.device) -> PairedMoments:
        if self.sums is None:
            self.sums = PairedMoments(
                widths[0], widths[1], device, full_x=False, full_y=False,
                shift=self.centering, exact=True,
            )  # fmt: skip
            self.gxy, self.xsq, self.ysq = self.sums.sxy, self.sums.sxx, self.sums.syy
            if self.centering:
                self.xsum, self.ysum = self.sums.sx, self.sums.sy
        return self.sums

    def _update_rows(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows of x (b, p) and y (b, q), float64, through copies scaled by the exponents."""
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
        # The uncentred squares: the scale a constant neuron's centred rounding noise is read at.
        if self.raw_xsq is None:
            self.raw_xsq, self.raw_ysq = torch.zeros_like(xsq), torch.zeros_like(ysq)
        self.raw_xsq += xsq
        self.raw_ysq += ysq
        self._sums_for((x.shape[1], y.shape[1]), x.device).update(x, y, scratch=True)

    def _centred(self, center: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if center != self.centering:
            raise InvalidOptionError(
                f"these statistics were gathered with centering={self.centering}"
            )
        assert self.sums is not None  # callers check for samples first
        if not center:
            return self.sums.sxy, self.sums.sxx, self.sums.syy

        def no_noise(c: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
            # A constant neuron leaves only rounding noise: make it exactly zero (a dead neuron).
            return torch.where(c <= CONSTANT_RATIO * raw, torch.zeros_like(c), c)

        xx, yy, xy = self.sums.centred()
        return xy, no_noise(xx, self.raw_xsq), no_noise(yy, self.raw_ysq)

    def alignment(self, group: str, center: bool = False) -> tuple[float, float, float, int]:
        """(best <X, Y g>, |X|^2, |Y|^2, padded width) after per-neuron normalisation if needed."""
        m, xsq, ysq = self._centred(center)
        width = max(m.shape)
        if _per_neuron(group):
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


# Features whose peaks lie within 2**-SAFE_EXPONENT .. 2**SAFE_EXPONENT are multiplied unscaled:
# their products and squares stay normal floats, so scaling the results afterwards is exact.
SAFE_EXPONENT = 400


def _sum_squares(blk: torch.Tensor) -> torch.Tensor:
    """Per-neuron sums of squares of a neuron-major (C, rows) block, float64."""
    if blk.stride(-1) == 1:
        return torch.linalg.vector_norm(blk, dim=1).square()
    return (blk * blk).sum(1)  # a transposed view: summing over its outer axis is the fast way


def _raw_products(
    x: torch.Tensor, y: torch.Tensor, layout: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unscaled float64 X'Y over positions (C_x, C_y) and both sides' neuron sums of squares.

    Dense and token features of float64 are multiplied in one product of transposed views (the
    floor itself) and squared in cache-sized blocks; conv features (and other dtypes) go through
    cache-sized neuron-major copies, each multiplied and squared while in cache."""
    kw = {"dtype": torch.float64}
    if not (copies(x, layout, torch.float64) or copies(y, layout, torch.float64)):
        (a,), (b,) = (
            neuron_blocks(x, layout, samples=x.shape[0]),
            neuron_blocks(y, layout, samples=y.shape[0]),
        )
        # a, b: neuron-major (C, rows) views, i.e. one input of (1, C, rows)
        return (
            products.matmul(a, b.T),
            products.channel_squares(a[None]),
            products.channel_squares(b[None]),
        )
    if infer(x, layout) == "conv" and x.dtype == y.dtype == torch.float64:
        xs, ys = x.flatten(2), y.flatten(2)  # (N, C, H W) views
        m = products.positions_product(xs, ys)
        if m is not None:
            return m, products.channel_squares(xs), products.channel_squares(ys)
    kw["samples"] = min(block_samples(x, layout), block_samples(y, layout))
    m = torch.zeros(width(x, layout), width(y, layout), dtype=torch.float64, device=x.device)
    sqx, sqy = torch.zeros_like(m[:, 0]), torch.zeros_like(m[0])
    for a, b in zip(neuron_blocks(x, layout, **kw), neuron_blocks(y, layout, **kw), strict=True):
        products.add_matmul_(m, a, b.T)
        sqx += _sum_squares(a)
        sqy += _sum_squares(b)
    return m, sqx, sqy


def _peak_exponents(
    t: torch.Tensor, per_neuron: bool, layout: str | None, name: str
) -> torch.Tensor:
    """``scale_exponent`` of ``t`` in its own layout: one, or one per neuron."""
    if not per_neuron:
        return scale_exponent(t, False, name)
    return scale_exponent(t.movedim(neuron_dim(t, layout), -1), True, name)


def _scaled_copy(t: torch.Tensor, exponent: torch.Tensor, layout: str | None) -> torch.Tensor:
    """float64 ``t * 2**exponent`` with per-neuron exponents broadcast along the neuron axis."""
    e = exponent
    if e.dim() == 1:
        e = e.view(-1, *([1] * (t.dim() - 1 - neuron_dim(t, layout))))
    return times_power_of_two(f64(t), e)


def _raw_exponents(
    t: torch.Tensor, sq: torch.Tensor, per_neuron: bool, layout: str | None
) -> torch.Tensor | None:
    """Power-of-two exponents for unscaled statistics, or None when ``t`` needs scaled copies.

    Read from the neuron sums of squares alone (no pass over ``t``): None for NaN/Inf, for a peak
    that may lie outside 2**+-SAFE_EXPONENT (the largest sum of squares bounds the peak from
    above, and from below over the ``rows`` terms), or, per neuron, for a neuron so small that
    its squares underflow. Exponents: per side from the largest neuron norm, per neuron from each
    norm (any power of two gives the same values; these keep the statistics near 1)."""
    if not bool(torch.isfinite(sq).all()):
        return None
    top = float(sq.max())
    rows = t.shape[0] * n_positions(t, layout)
    if top > 2.0 ** (2 * SAFE_EXPONENT) or top < rows * 2.0 ** (-2 * SAFE_EXPONENT):
        return None
    if not per_neuron:
        return -torch.frexp(torch.tensor(top, dtype=torch.float64).sqrt()).exponent.to(torch.int64)
    if bool(((sq > 0) & (sq < 2.0 ** (-2 * SAFE_EXPONENT))).any()):
        return None
    dead = (sq == 0).nonzero().flatten()
    if dead.numel() and bool(t.index_select(neuron_dim(t, layout), dead).any()):
        return None  # nonzero values whose squares underflowed to zero
    return -torch.frexp(sq.sqrt()).exponent.to(torch.int64)


def best_alignment(m: torch.Tensor, group: str, width: int | None = None) -> float:
    """max over g in the group (zero-padded to ``width``) of <X, Y g> = tr(g' M)-type sums."""
    fam = family(group)
    if fam is ORTHOGONAL:
        return float(torch.linalg.svdvals(m).sum())
    width = width or max(m.shape)
    gain = m.abs() if fam.flips_signs else m
    # Pad to square, as the paper zero-pads neurons: a neuron may match a padded one with gain 0.
    g = np.zeros((width, width))
    g[: m.shape[0], : m.shape[1]] = gain.cpu().numpy()
    perm = fam.best_perm(g).numpy()
    return float(g[np.arange(width), perm].sum())


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
    d = math.acos(cos) if kind == "angular" else math.sqrt(max(2.0 - 2.0 * cos, 0.0))
    return within(d, DISTANCE_RANGE[kind])


def value_of(
    x: torch.Tensor, y: torch.Tensor, *, similarity: bool, options: dict[str, Any]
) -> float:
    """``procrustes_similarity`` (or ``_distance``) of validated features, with its options."""
    g = procrustes_group(options.get("group", ORTHOGONAL))
    center, layout = bool(options.get("center", False)), options.get("layout")
    stats = stats_of(x, y, g, bool(options.get("upsample", False)), layout, center)
    if similarity:
        return similarity_from_stats(stats, g, center)
    return distance_from_stats(stats, g, options.get("kind", "angular"), center)


def similarity_from_stats(stats: ProcrustesStats, group: str, center: bool = False) -> float:
    gain, nx, ny, width = stats.alignment(group, center)
    if _per_neuron(group):
        d2 = max(nx + ny - 2.0 * gain, 0.0)
        sim = 1.0 - math.sqrt(d2 / (4.0 * width))
    else:
        cos = 0.0 if _degenerate(nx, ny) else gain / math.sqrt(nx * ny)
        sim = 1.0 - 0.5 * math.sqrt(max(2.0 - 2.0 * cos, 0.0))
    # An anti-correlated neuron's normalised product can round to -(1 + 2^-52): d2 > 4 width.
    return within(sim, similarity_range(group))


def prepare_rows(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated X and Y in their own layout with matching positions (no copy unless upsampled)."""
    # Finiteness is checked by ProcrustesStats.update.
    xt, yt = validate(X, "X", layout, finite=False), validate(Y, "Y", layout, finite=False)
    return match_positions(xt, yt, upsample=upsample, layout_x=layout, layout_y=layout)


def new_stats(group: str, center: bool) -> ProcrustesStats:
    """Empty statistics for ``group`` (per-neuron scaling for the monomial groups)."""
    return ProcrustesStats(centering=center, per_neuron=_per_neuron(group))


def _stats(
    X: FeatureLike, Y: FeatureLike, group: str, upsample: bool, layout: str | None, center: bool
) -> ProcrustesStats:
    x, y = prepare_rows(X, Y, upsample=upsample, layout=layout)
    return stats_of(x, y, group, upsample, layout, center)


def stats_of(
    x: torch.Tensor, y: torch.Tensor, group: str, upsample: bool, layout: str | None, center: bool
) -> ProcrustesStats:
    """Statistics of validated features x, y (positions matched here: ``pairwise`` calls this
    on features it validated once per model)."""
    x, y = match_positions(x, y, upsample=upsample, layout_x=layout, layout_y=layout)
    stats = new_stats(group, center)
    stats.update(x, y, layout)  # unequal widths: best_alignment zero-pads the cross matrix
    return stats


@declare(invariances(ORTHOGONAL))
def procrustes_distance(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    group: GroupLike = "orthogonal",
    kind: str = "angular",
    center: bool = False,
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """Procrustes distance between X and Y modulo ``group`` acting on the neuron axis.

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same N inputs. ``group``: a family name in
    ``GROUPS`` or an IntertwinerGroup (mapped to the family of phi(G)). 0 for identical inputs.
    Range: [0, pi] angular, [0, 2] euclidean. Exactly scale-free (1e-300 to 1e300 alike).
    Floor: the float64 X'Y product over positions and the C x C group step (module docstring).
    Invariant to the group (see ``invariant_families(group)``); ``.invariant_to`` is for the default.
    """
    g = procrustes_group(group)
    _validate.choice(kind, "kind", KINDS)
    return distance_from_stats(_stats(X, Y, g, upsample, layout, center), g, kind, center)


@declare(invariances(ORTHOGONAL))
def procrustes_similarity(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    group: GroupLike = "orthogonal",
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
    monomial like G_ReLU). Floor: as ``procrustes_distance``.
    """
    g = procrustes_group(group)
    return similarity_from_stats(_stats(X, Y, g, upsample, layout, center), g, center)


procrustes_distance.value_range = DISTANCE_RANGE["angular"]
procrustes_similarity.value_range = similarity_range(ORTHOGONAL)
