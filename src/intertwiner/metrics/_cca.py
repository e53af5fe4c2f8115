"""The CCA family: mean canonical correlation (and Yanai's R^2), SVCCA, PWCCA.

Features are (positions, neurons) matrices (see ``_moments``): dense (N, C) as is, conv one row per
input and pixel, tokens one row per input and token. With centred X (M, p) and Y (M, q), the
canonical correlations rho_1 >= ... >= rho_r, r = min(rank X, rank Y), are the singular values of
Wx' X'Y Wy, where Wx = Vx Lx^(-1/2) whitens X (X'X = Vx Lx Vx', over the numerical rank: eigenvalues
below ``REL_TOL`` times the largest are round-off of absent directions and are dropped, i.e. the
pseudo-inverse). Everything comes from the second moments, so every measure here streams.

- ``cca``: mean rho (``statistic="mean"``) or Yanai's R^2 = mean rho^2 (``statistic="yanai"``;
  Kornblith et al. 2019's R^2_CCA). Invariant to GL on each side (and translations, scale).
- ``svcca`` (Raghu et al. 2017): each side is first reduced to its top principal directions that keep
  ``variance`` of its variance (or ``dims`` of them); then mean rho. Invariant to orthogonal maps (the
  principal subspace rotates with them); GL changes the spectrum. ``variance=1.0`` keeps every
  direction: plain CCA, invariant to GL.
- ``pwcca`` (Morcos et al. 2018): sum_i a_i rho_i with a_i proportional to sum_j |<h_i, x_j>|, h_i the
  unit canonical variates of X and x_j the centred neurons of X (the paper's formula; the weights
  come from X, the first argument). |.| and the sum over j make it invariant to signed
  permutations of X's neurons; per-neuron scales and rotations change the weights.

Sample sizes: with rank X + rank Y > M - 1 the two centred column spaces must intersect and some
rho are 1 whatever the data; we refuse (``TooFewSamplesError``) rather than report that. A constant
representation has no canonical directions: a warning and 0.0.

Ranges: every value is in [0, 1]. Floor: the three moment products (``_moments``) plus O(p^3 + q^3)
eigen- and singular value decompositions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError, TooFewSamplesError
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import CrossMoments, check_choice, cross_moments

#: Eigenvalues of X'X below this fraction of the largest are treated as zero (numerical rank).
REL_TOL = 1e-10
STATISTICS = ("mean", "yanai")
VALUE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class Basis:
    """Principal directions ``v`` (p, r) of one side and their eigenvalues ``lam`` (r,), largest
    first: the numerical rank, or the top ones of SVCCA."""

    v: torch.Tensor
    lam: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.lam.shape[0])

    def whitener(self) -> torch.Tensor:
        """Wx = V L^(-1/2) (p, r): X Wx has identity covariance on the kept directions."""
        return self.v / self.lam.sqrt()


def principal(s: torch.Tensor, variance: float = 1.0, dims: int | None = None) -> Basis:
    """Eigen-directions of a centred second-moment matrix ``s`` above the numerical rank, reduced to
    the fewest that keep ``variance`` of the total (or the top ``dims``)."""
    lam, v = torch.linalg.eigh(s)
    lam, v = lam.flip(0), v.flip(1)
    top = float(lam[0]) if lam.numel() else 0.0
    keep = int((lam > REL_TOL * top).sum()) if top > 0 else 0
    if dims is not None:
        keep = min(keep, dims)
    elif variance < 1.0 and keep:
        frac = torch.cumsum(lam[:keep], 0) / lam[:keep].sum()
        keep = min(keep, int((frac < variance - 1e-12).sum()) + 1)
    return Basis(v[:, :keep], lam[:keep])


@dataclass(frozen=True)
class Canonical:
    """Canonical correlations ``rho`` (largest first) and the X-side directions ``ux`` in X's
    whitened coordinates (r_x, r), from which PWCCA's weights follow."""

    rho: torch.Tensor
    ux: torch.Tensor
    bx: Basis


def canonical(m: CrossMoments, bx: Basis, by: Basis, what: str) -> Canonical | None:
    """The canonical correlations of X and Y restricted to the bases; None when a side is constant.

    ``TooFewSamplesError`` when rank X + rank Y > M - 1 (the spurious-correlation regime)."""
    if bx.rank == 0 or by.rank == 0:
        return None
    if bx.rank + by.rank > m.n - 1:
        raise TooFewSamplesError(
            f"{what} needs more sample positions than the two ranks together (M - 1 >= rank X + "
            f"rank Y = {bx.rank} + {by.rank}), got M = {m.n}: with fewer, some canonical "
            "correlations are 1 whatever the data. Pass more inputs, or reduce the dimensions "
            "first (svcca with variance < 1 or dims)"
        )
    t = bx.whitener().T @ m.xy @ by.whitener()
    u, rho, _ = torch.linalg.svd(t, full_matrices=False)
    return Canonical(rho.clamp(0.0, 1.0), u, bx)


def _mean_rho(c: Canonical | None, what: str, squared: bool = False) -> float:
    if c is None:
        return undefined(f"{what} of a (numerically) constant representation is undefined")
    r = c.rho**2 if squared else c.rho
    return clip(float(r.mean()), *VALUE_RANGE)


def cca_from_moments(m: CrossMoments, statistic: str = "mean") -> float:
    check_choice(statistic, "statistic", STATISTICS)
    m.require(2, "CCA")
    c = canonical(m, principal(m.xx), principal(m.yy), "CCA")
    return _mean_rho(c, "CCA", squared=statistic == "yanai")


def _check_variance(variance: float, dims: int | None) -> None:
    if not (isinstance(variance, (int, float)) and 0.0 < variance <= 1.0):
        raise InvalidOptionError(f"variance must be in (0, 1], got {variance!r}; e.g. 0.99")
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise InvalidOptionError(f"dims must be a positive integer or None, got {dims!r}")


def svcca_from_moments(
    m: CrossMoments, variance: float = 0.99, dims: int | None = None, statistic: str = "mean"
) -> float:
    _check_variance(variance, dims)
    check_choice(statistic, "statistic", STATISTICS)
    m.require(2, "SVCCA")
    bx, by = principal(m.xx, variance, dims), principal(m.yy, variance, dims)
    return _mean_rho(canonical(m, bx, by, "SVCCA"), "SVCCA", squared=statistic == "yanai")


def pwcca_from_moments(m: CrossMoments) -> float:
    m.require(2, "PWCCA")
    c = canonical(m, principal(m.xx), principal(m.yy), "PWCCA")
    if c is None:
        return undefined("PWCCA of a (numerically) constant representation is undefined")
    r = c.rho.shape[0]
    # <h_i, x_j> for unit canonical variates h_i = X Wx u_i: (X'X Wx u_i)_j = (V L^(1/2) u_i)_j.
    loadings = (c.bx.v * c.bx.lam.sqrt()) @ c.ux[:, :r]
    weights = loadings.abs().sum(0)
    return clip(float((weights * c.rho).sum() / weights.sum()), *VALUE_RANGE)


@measure("general_linear", VALUE_RANGE)
def cca(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    statistic: str = "mean",
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """Mean canonical correlation of X and Y (``statistic="yanai"``: Yanai's R^2, mean rho^2).

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same inputs; rows are sample positions (conv:
    one per input and pixel; spatial sizes must match unless ``upsample=True``). Range [0, 1];
    invariant to invertible linear maps of either side (GL). Needs M - 1 >= rank X + rank Y
    positions (``TooFewSamplesError``); a constant side warns and gives 0.0.
    """
    return cca_from_moments(cross_moments(X, Y, upsample=upsample, layout=layout), statistic)


@measure("orthogonal", VALUE_RANGE)
def svcca(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    variance: float = 0.99,
    dims: int | None = None,
    statistic: str = "mean",
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """SVCCA (Raghu et al. 2017): keep each side's top principal directions explaining ``variance``
    of its variance (or its top ``dims``), then the mean canonical correlation (``statistic=
    "yanai"``: mean rho^2, as repsim's default summary). Range [0, 1].

    Invariant to orthogonal maps (``variance=1.0`` with ``dims=None``: to GL, as plain CCA). Layouts
    and sample needs as ``cca``.
    """
    m = cross_moments(X, Y, upsample=upsample, layout=layout)
    return svcca_from_moments(m, variance, dims, statistic)


@measure("signed_permutation", VALUE_RANGE)
def pwcca(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): canonical correlations weighted by how much of
    X's neurons each canonical variate of X accounts for (weights from X: not symmetric).

    Range [0, 1]; invariant to signed permutations of the neurons (GL on Y alone leaves it
    unchanged too). Layouts and sample needs as ``cca``.
    """
    return pwcca_from_moments(cross_moments(X, Y, upsample=upsample, layout=layout))


def svcca_invariance(variance: float = 0.99, dims: int | None = None) -> str:
    """The family SVCCA with these options is invariant to."""
    keeps_all = dims is None and math.isclose(variance, 1.0)
    return "general_linear" if keeps_all else "orthogonal"
