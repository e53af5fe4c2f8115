"""Closed-form and matching solvers for stitch layers, from streamed feature statistics.

``FeatureStats`` accumulates, in float64, the first and second moments of A's features ``x``
(``c_in`` channels) and B's features ``y`` (``c_out`` channels) at a site, every spatial position or
token counting as a sample. From them:

- ``lstsq``: ridge least squares ``min ||M x + b - y||^2`` (the ``full`` init),
- ``procrustes``: the nearest orthogonal map (the ``orthogonal`` init),
- ``reduced_rank``: the best rank-r map (reduced-rank regression, the ``low_rank`` init),
- ``diagonal``: per-unit least squares,
- ``match``: the activation-matching solver for monomial kinds: Pearson correlation between every
  unit of B and every unit of A, Hungarian assignment on it, then least-squares scales under the
  kind's constraint (``>= 0`` for ``perm_scale``, signs for ``signed_perm``, 1 for ``permutation``).
"""

from __future__ import annotations

import torch

from intertwiner._paired import PairedMoments
from intertwiner.errors import (
    InvalidOptionError,
    TooFewSamplesError,
    UnsupportedGroupError,
)
from intertwiner.groups import Family, best_assignment, family


def _monomial(kind: str) -> Family:
    fam = family(kind)
    if not fam.monomial:
        raise UnsupportedGroupError(f"match handles monomial kinds only, got {kind!r}")
    return fam


def channels_last(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``x`` with the channel axis moved last and every other axis flattened: ``(samples, C)``."""
    return x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])


class FeatureStats(PairedMoments):
    """Streaming float64 moments of paired features; ``update(x, y)`` takes ``(M, c_in), (M, c_out)``.

    The one paired-moment accumulator (``intertwiner._paired.PairedMoments``, its precision rules
    included) with only the diagonal of ``y^T y``. ``cross_x=False`` keeps only the diagonal of
    ``x^T x`` too: enough for ``match``, ``diagonal`` and the residual of monomial or diagonal
    maps, and half the work of the full moments.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        device: torch.device | str | None = None,
        *,
        cross_x: bool = True,
        block_rows: int = 4096,
    ):
        super().__init__(c_in, c_out, device, full_x=cross_x, full_y=False, block_rows=block_rows)

    @property
    def cross_x(self) -> bool:
        return self.full_x

    def require_cross_x(self, what: str) -> None:
        """Raise unless the full ``x^T x`` was kept (``what`` names the solver that needs it)."""
        if not self.cross_x:
            raise InvalidOptionError(
                f"{what} needs the full x^T x, but these statistics keep only its diagonal "
                "(cross_x=False); build them with cross_x=True"
            )

    def moments(self, center: bool) -> tuple[torch.Tensor, ...]:
        """``(mx, my, Cxx, vyy, Cxy)``: means, (centered if ``center``) second moments / n; for y
        only the diagonal ``vyy`` is kept, and ``Cxx`` is the diagonal alone (a vector) when the
        statistics were built with ``cross_x=False``."""
        if self.n < 2:
            raise TooFewSamplesError(f"need at least 2 feature samples, got {self.n}")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx, cyy, cxy = self.sxx / self.n, self.syy / self.n, self.sxy / self.n
        if center:
            cxx = cxx - (torch.outer(mx, mx) if self.cross_x else mx * mx)
            cyy = cyy - my * my
            cxy = cxy - torch.outer(mx, my)
        return mx, my, cxx, cyy, cxy

    def var_x(self, center: bool) -> torch.Tensor:
        """The diagonal of ``Cxx`` (c_in,), whichever form the statistics keep."""
        cxx = self.moments(center)[2]
        return cxx.diagonal() if self.cross_x else cxx

    def residual(self, m: torch.Tensor, b: torch.Tensor | None = None) -> float:
        """Relative squared error ``E||M x + b - y||^2 / E||y||^2`` of the map ``(M, b)``; with
        ``cross_x=False`` only for maps with at most one nonzero per row (monomial, diagonal)."""
        mx, my, cxx, cyy, cxy = self.moments(center=False)
        m = m.to(cxy)
        if self.cross_x:
            quad = (m @ cxx @ m.T).trace()
        elif bool(((m != 0).sum(1) <= 1).all()):
            quad = (m * m * cxx.unsqueeze(0)).sum()  # (M Cxx M^T)_ii = M_ip^2 Cxx_pp
        else:
            self.require_cross_x("the residual of a map with several inputs per output")
        err = quad - 2 * (m @ cxy).trace() + cyy.sum()
        if b is not None:
            b = b.to(cxy)
            err = err + 2 * b @ (m @ mx - my) + b @ b
        return float(err.clamp(min=0) / cyy.sum().clamp(min=1e-300))


def _bias(m: torch.Tensor, mx: torch.Tensor, my: torch.Tensor, center: bool):
    return my - m @ mx if center else None


def lstsq(stats: FeatureStats, *, bias: bool, ridge: float = 1e-4):
    """``(M (c_out, c_in), b or None)`` minimising ``||M x + b - y||^2 + ridge * tr(Cxx)/c * ||M||^2``."""
    stats.require_cross_x("lstsq")
    mx, my, cxx, _, cxy = stats.moments(center=bias)
    c = cxx.shape[0]
    lam = ridge * cxx.trace().clamp(min=1e-300) / c
    m = torch.linalg.solve(cxx + lam * torch.eye(c, dtype=cxx.dtype, device=cxx.device), cxy).T
    return m, _bias(m, mx, my, bias)


def procrustes(stats: FeatureStats, *, bias: bool):
    """Orthogonal ``Q`` minimising ``||Q x + b - y||^2``: ``Q = U V^T`` for ``Cyx = U S V^T``."""
    mx, my, _, _, cxy = stats.moments(center=bias)
    u, _, vh = torch.linalg.svd(cxy.T)
    q = u @ vh
    return q, _bias(q, mx, my, bias)


def reduced_rank(stats: FeatureStats, rank: int, *, bias: bool, ridge: float = 1e-4):
    """Best rank-r map: least squares, then projection onto the top-r directions of its fitted
    values (reduced-rank regression). Returns ``(up (c_out, r), down (r, c_in), b)``."""
    m, _ = lstsq(stats, bias=bias, ridge=ridge)
    mx, my, cxx, _, _ = stats.moments(center=bias)
    fitted_cov = m @ cxx @ m.T  # covariance of the least-squares predictions, (c_out, c_out)
    _, vecs = torch.linalg.eigh(fitted_cov)
    v = vecs[:, -rank:]  # top-r eigenvectors
    up, down = v, v.T @ m
    return up, down, _bias(up @ down, mx, my, bias)


def diagonal(stats: FeatureStats, *, bias: bool):
    """Per-unit least squares ``y_i ~ s_i x_i (+ b_i)``."""
    mx, my, _, _, cxy = stats.moments(center=bias)
    var = stats.var_x(center=bias)
    s = torch.where(var > 0, cxy.diagonal() / var.clamp(min=1e-300), torch.ones_like(var))
    return s, (my - s * mx) if bias else None


def correlation(stats: FeatureStats) -> torch.Tensor:
    """Pearson correlation ``(c_out, c_in)`` between B's units (rows) and A's units (columns);
    a unit with zero variance correlates 0 with everything."""
    _, _, _, cyy, cxy = stats.moments(center=True)
    sx = stats.var_x(center=True).clamp(min=0).sqrt()
    sy = cyy.clamp(min=0).sqrt()
    denom = torch.outer(sy, sx)
    return torch.where(denom > 0, cxy.T / denom.clamp(min=1e-300), torch.zeros_like(denom))


def lsq_gain(stats: FeatureStats, kind: str, *, bias: bool) -> torch.Tensor:
    """``gain[i, j]``: how much pairing B's unit i with A's unit j (best scale under ``kind``)
    lowers ``E||y_i - s x_j (- b_i)||^2``. The monomial map's total error is ``E||y||^2 - sum_i
    gain[i, perm[i]]``, so Hungarian on ``gain`` is the exact least-squares fit over the kind."""
    _, _, _, _, cxy = stats.moments(center=bias)
    xy = cxy.T  # (c_out, c_in): E[x_j y_i]
    xx = stats.var_x(center=bias).unsqueeze(0)  # E[x_j^2]
    return _monomial(kind).fit_scales(xy, xx)[0]


def _score_matrix(stats: FeatureStats, kind: str, *, bias: bool, score: str):
    """``(gain (c_out, c_in), total)``: the matrix Hungarian maximises and the scale of its sum
    (``E||y (- my)||^2`` for ``lsq``, ``c_out`` for ``corr``) used by ``assignment_converged``."""
    if score == "lsq":
        _, _, _, cyy, _ = stats.moments(center=bias)
        return lsq_gain(stats, kind, bias=bias), float(cyy.sum())
    if score == "corr":
        corr = correlation(stats)
        # A family with signs matches a unit to its negation as well as to itself.
        gain = corr.abs() if _monomial(kind).flips_signs else corr
        return gain, float(corr.shape[0])
    raise InvalidOptionError(f"score must be 'lsq' or 'corr', got {score!r}")


def assignment(stats: FeatureStats, kind: str, *, bias: bool, score: str = "lsq"):
    """``(perm (c_out,), gain)``: the Hungarian assignment of ``match`` (B's unit i <- A's unit
    ``perm[i]``) and the score matrix it maximises."""
    gain, _ = _score_matrix(stats, kind, bias=bias, score=score)
    return best_assignment(gain), gain


def assignment_converged(
    stats: FeatureStats, kind: str, previous: torch.Tensor, *, bias: bool, score: str = "lsq",
    tol: float = 1e-3,
) -> tuple[bool, torch.Tensor]:  # fmt: skip
    """Is ``previous`` (an assignment fitted on fewer samples) still optimal, to ``tol``, on the
    statistics seen so far? Returns ``(converged, perm)`` with ``perm`` the current optimum.

    Compares objectives, not permutations: near-tied units (dead or duplicated ones) may swap
    forever without changing the fit. For ``lsq`` the test reads: the previous assignment's
    least-squares error exceeds the optimum's by at most ``tol * E||y||^2``."""
    perm, gain = assignment(stats, kind, bias=bias, score=score)
    _, total = _score_matrix(stats, kind, bias=bias, score=score)
    idx = torch.arange(len(perm))
    g = gain.cpu()
    best = float(g[idx, perm].sum())
    prev = float(g[idx, previous.cpu()].sum())
    return best - prev <= tol * max(total, 1e-300), perm


def match(stats: FeatureStats, kind: str, *, bias: bool, score: str = "lsq"):
    """Activation matching for a monomial ``kind``: returns ``(perm, scale, b or None)`` with the
    ``MonomialElement`` convention ``y_i ~ scale[i] * x[perm[i]] (+ b_i)``.

    ``score="lsq"`` (default) assigns with ``lsq_gain``: the exact least-squares optimum over the
    kind. ``score="corr"`` maximises the summed Pearson correlation (absolute for ``signed_perm``
    and ``monomial``), the classic unit matching. Scales are then the least-squares optimum of each
    matched pair under the kind's constraint.
    """
    fam = _monomial(kind)
    perm, _ = assignment(stats, kind, bias=bias, score=score)
    mx, my, _, _, cxy = stats.moments(center=bias)
    dev = cxy.device
    idx = torch.arange(len(perm), device=dev)
    p = perm.to(dev)
    var = stats.var_x(center=bias)[p]  # second moment of the matched A unit
    cov = cxy[p, idx]  # cross moment of (x_{perm[i]}, y_i)
    scale = fam.fit_scales(cov, var)[1]
    if fam.flips_signs:  # a zero scale is the one boundary point of a signed family's set
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # keep it invertible
    b = (my - scale * mx[p]) if bias else None
    return perm, scale, b
