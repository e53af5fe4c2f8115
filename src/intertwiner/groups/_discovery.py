"""Numerical discovery of the intertwiner group of any elementwise function.

For an elementwise sigma whose sigma(I) is invertible, A is in G_sigma iff sigma(A x) = phi(A) sigma(x)
with phi(A) = sigma(A) sigma(I)^-1 (paper.md section 1). For a nonlinear sigma the group is monomial,
so it is decided by the scalar question: which a admit a b(a) with sigma(a x) = b(a) sigma(x) for all
real x? Positive a give the positive diagonal part, a = -1 the sign flips; the map a -> b(a) gives phi.

The test grid is deterministic and spans many orders of magnitude on both sides of zero, so that
functions homogeneous on only part of the line (softplus ~ relu far out, relu6 near zero) are caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from intertwiner.errors import (
    NotElementwiseError,
    SingularActivationError,
    UnsupportedGroupError,
)
from intertwiner.groups._families import (
    GENERAL_LINEAR,
    MONOMIAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    SIGNED_PERMUTATION,
)
from intertwiner.groups._group import IntertwinerGroup, PhiKind
from intertwiner.groups._verify import as_function, verify

POSITIVE_SCALINGS = (0.25, 0.5, 0.8, 1.25, 2.0, 3.0, 7.0)
NEGATIVE_SCALINGS = (-1.0, -0.5, -2.0, -3.0)


@dataclass
class ScalingTest:
    """One tested scaling a: the fitted b(a), the worst pointwise relative residual, the verdict."""

    a: float
    b: float
    residual: float
    admitted: bool


@dataclass
class DiscoveryEvidence:
    """What ``discover`` measured, so a user can see why it decided as it did."""

    elementwise_error: float
    sigma_identity_min_singular_value: float
    linear: bool
    scalings: list[ScalingTest] = field(default_factory=list)
    family: str = ""
    phi: PhiKind = "identity"
    fitted_power: float | None = None
    verify_error: float = float("nan")
    grid_size: int = 0
    tolerance: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["phi"] = self.phi if isinstance(self.phi, str) else list(self.phi)
        return d


def _grid(dtype: torch.dtype) -> torch.Tensor:
    lin = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
    mags = torch.logspace(-4, 3, 281, dtype=torch.float64)
    return torch.cat([lin, mags, -mags, torch.zeros(1, dtype=torch.float64)]).to(dtype)


def _elementwise_error(fn: Callable, dtype: torch.dtype) -> float:
    """Max change in other coordinates when one coordinate moves, plus shape/permutation checks."""
    gen = torch.Generator().manual_seed(1234)
    x = 3.0 * torch.randn(32, 6, generator=gen, dtype=torch.float64).to(dtype)
    y = fn(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise NotElementwiseError(
            f"fn maps a tensor of shape {tuple(x.shape)} to "
            f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}; an "
            "elementwise function must return a tensor of the same shape."
        )
    scale = y.abs().max().clamp_min(1.0)
    worst = 0.0
    # Each output may depend only on the input at the same position.
    for j in range(x.shape[1]):
        x2 = x.clone()
        x2[:, j] += 1.0 + x2[:, j].abs()
        y2 = fn(x2)
        others = [k for k in range(x.shape[1]) if k != j]
        worst = max(worst, float((y2[:, others] - y[:, others]).abs().max() / scale))
    # ...and through the same function at every position.
    flat = fn(x.reshape(-1, 1)).reshape(x.shape)
    worst = max(worst, float((flat - y).abs().max() / scale))
    return worst


def _fit_scaling(fn: Callable, grid: torch.Tensor, a: float, tol: float) -> ScalingTest:
    u = fn(a * grid)
    v = fn(grid)
    # Overflow far out (exp, high powers) says nothing about symmetry: compare where both are finite.
    finite = torch.isfinite(u) & torch.isfinite(v)
    u, v = u[finite], v[finite]
    big = v.abs() > 1e-8 * v.abs().max()
    if not bool(big.any()):
        return ScalingTest(a, float("nan"), float("inf"), False)
    b = float(torch.median(u[big] / v[big]))
    denom = u.abs() + abs(b) * v.abs() + 1e-300
    resid = (u - b * v).abs() / denom
    # Both sides exactly zero (e.g. relu on the negative half-line) is a perfect match.
    resid = torch.where((u == 0) & (v == 0), torch.zeros_like(resid), resid)
    r = float(resid.max()) if bool(torch.isfinite(resid).all()) else float("inf")
    return ScalingTest(a, b, r, r < tol)


def _phi_from_scalings(tests: list[ScalingTest], family_name: str) -> tuple[PhiKind, float | None]:
    admitted = [t for t in tests if t.admitted]
    pos = [t for t in admitted if t.a > 0 and t.a != 1.0]
    neg = [t for t in admitted if t.a < 0]
    d: float | None = None
    if pos:
        powers = [math.log(t.b) / math.log(t.a) if t.b > 0 else float("nan") for t in pos]
        if any(math.isnan(p) for p in powers) or max(powers) - min(powers) > 1e-6:
            raise UnsupportedGroupError(
                "positive scalings are symmetries but b(a) is not a power of a "
                f"(fitted exponents {powers}); no phi kind describes this function"
            )
        d = sum(powers) / len(powers)
        if abs(d - round(d)) < 1e-6:
            d = float(round(d))
    if family_name in ("permutation",):
        return "identity", d
    if family_name == "signed_permutation":
        b = next(t.b for t in neg if t.a == -1.0)
        if abs(b + 1) < 1e-6:
            return "identity", d
        if abs(b - 1) < 1e-6:
            return "abs", d
        raise UnsupportedGroupError(f"sigma(-x) = {b:.6g} sigma(x): only b = +-1 form a group")
    assert d is not None
    if family_name == "positive_monomial":
        return ("identity" if d == 1.0 else ("power", d)), d
    # monomial: negative scalings tell identity/abs/power apart.
    signs = {t.a: t.b for t in neg}
    odd_like = all(
        abs(b - math.copysign(abs(a) ** d, -1)) < 1e-6 * abs(b) for a, b in signs.items()
    )
    even_like = all(abs(b - abs(a) ** d) < 1e-6 * abs(b) for a, b in signs.items())
    if d == 1.0:
        if odd_like:
            return "identity", d
        if even_like:
            return "abs", d
    elif float(d).is_integer():
        if (int(d) % 2 == 1 and odd_like) or (int(d) % 2 == 0 and even_like):
            return ("power", int(d)), d
    raise UnsupportedGroupError(
        f"every nonzero scaling is a symmetry with |b(a)| = |a|^{d:g}, but the signs of b(a) "
        f"({signs}) match no phi kind (identity, abs, integer power)"
    )


def discover(
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
    tol: float = 1e-8,
    check: bool = True,
) -> IntertwinerGroup:
    """Classify the intertwiner group of an elementwise ``fn`` numerically.

    Returns an IntertwinerGroup whose ``.evidence`` (a DiscoveryEvidence) lists every scaling tested,
    the fitted b(a) and residuals. Raises NotElementwiseError, SingularActivationError (sigma(I)
    singular) or UnsupportedGroupError (a symmetry no supported family/phi describes).
    """
    fn = as_function(fn, dtype)
    label = name or getattr(fn, "__name__", None) or type(fn).__name__
    with torch.no_grad():
        elem_err = _elementwise_error(fn, dtype)
        if elem_err > 1e-9:
            raise NotElementwiseError(
                f"{label} is not elementwise: changing one input coordinate changed other outputs "
                f"by up to {elem_err:.3g} (relative). Intertwiner groups are defined for functions "
                "applied entrywise."
            )
        eye = fn(torch.eye(4, dtype=dtype))
        smin = float(torch.linalg.svdvals(eye.double()).min()) if torch.isfinite(eye).all() else 0.0
        if smin < 1e-10:
            raise SingularActivationError(
                f"sigma(I) is singular for {label} (smallest singular value {smin:.3g}): "
                "phi(A) = sigma(A) sigma(I)^-1 is undefined (paper.md section 1)."
            )
        grid = _grid(dtype)
        v = fn(grid)
        if not bool(torch.isfinite(v[grid.abs() <= 8]).all()):
            raise UnsupportedGroupError(
                f"{label} is not finite on [-8, 8]; discover needs a function defined on the "
                "whole real line"
            )
        finite = torch.isfinite(v)
        grid, v = grid[finite], v[finite]
        k = float(fn(torch.ones(1, dtype=dtype)))
        lin_resid = float(((v - k * grid).abs() / (v.abs() + abs(k) * grid.abs() + 1e-300)).max())
        evidence = DiscoveryEvidence(
            elementwise_error=elem_err,
            sigma_identity_min_singular_value=smin,
            linear=lin_resid < tol,
            grid_size=grid.numel(),
            tolerance=tol,
        )
        if evidence.linear:
            evidence.family = GENERAL_LINEAR.name
            group = IntertwinerGroup(GENERAL_LINEAR, "identity", f"G_{label}", evidence)
        else:
            if abs(float(fn(torch.zeros(1, dtype=dtype)))) > 0 and _is_affine(fn, grid, tol):
                raise UnsupportedGroupError(
                    f"{label} is affine with a nonzero offset: its group {{A : A 1 = 1}} is not "
                    "one of the supported families"
                )
            tests = [_fit_scaling(fn, grid, a, tol) for a in POSITIVE_SCALINGS + NEGATIVE_SCALINGS]
            evidence.scalings = tests
            fam = _family_from_scalings(tests, label)
            phi, d = _phi_from_scalings(tests, fam.name)
            evidence.family, evidence.phi, evidence.fitted_power = fam.name, phi, d
            group = IntertwinerGroup(fam, phi, f"G_{label}", evidence)
        if check:
            err = verify(group, fn, n=6, trials=8, dtype=dtype, relative=True)
            evidence.verify_error = err
            if not err < 1e-6:
                raise UnsupportedGroupError(
                    f"{label}: the classified group {group.name} ({group.family.name}, "
                    f"phi {group.phi_label}) fails verification (relative error {err:.3g})"
                )
    return group


def _is_affine(fn: Callable, grid: torch.Tensor, tol: float) -> bool:
    c = fn(torch.zeros(1, dtype=grid.dtype))
    k = fn(torch.ones(1, dtype=grid.dtype)) - c
    v = fn(grid)
    pred = k * grid + c
    return float(((v - pred).abs() / (v.abs() + pred.abs() + 1e-300)).max()) < tol


def _family_from_scalings(tests: list[ScalingTest], label: str):
    pos = [t.admitted for t in tests if t.a > 0]
    neg = [t.admitted for t in tests if t.a < 0]
    flip = next(t.admitted for t in tests if t.a == -1.0)
    if any(pos) and not all(pos):
        ok = [t.a for t in tests if t.a > 0 and t.admitted]
        raise UnsupportedGroupError(
            f"{label} admits some positive scalings ({ok}) but not all: a discrete scaling "
            "symmetry that none of the supported families describes"
        )
    if all(pos):
        if all(neg):
            return MONOMIAL
        if not any(neg):
            return POSITIVE_MONOMIAL
    elif flip and not any(t.admitted for t in tests if t.a < 0 and t.a != -1.0):
        return SIGNED_PERMUTATION
    elif not any(neg):
        return PERMUTATION
    bad = [(t.a, t.admitted) for t in tests]
    raise UnsupportedGroupError(
        f"{label}: the admitted scalings {bad} are not closed under composition; this looks like "
        "a numerical problem (try a smaller tol or float64)"
    )
