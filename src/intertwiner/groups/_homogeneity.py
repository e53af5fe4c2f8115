"""How far an activation is from positive homogeneity (the paper's GELU remark, paper.md section 2).

``homogeneity_defect(fn, lam) = RMS_{X ~ N(0,1)} [fn(lam X) - lam fn(X)]``, computed by adaptive
quadrature (deterministic, not Monte Carlo). It is 0 for every lam > 0 exactly when positive
scalings intertwine fn (ReLU, LeakyReLU); for GELU it is small near lam = 1, so GELU networks sit
close to the G_ReLU regime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from scipy import integrate

from intertwiner.groups._verify import as_function

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _scalar(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[float], float]:
    f = as_function(fn, torch.float64)

    def value(x: float) -> float:
        with torch.no_grad():
            return float(f(torch.tensor([x], dtype=torch.float64))[0])

    return value


def homogeneity_defect(fn: Callable[[torch.Tensor], torch.Tensor], lam: float) -> float:
    """RMS over X ~ N(0, 1) of ``fn(lam X) - lam fn(X)`` (0 for positively homogeneous fn)."""
    f = _scalar(fn)

    def integrand(x: float) -> float:
        d = f(lam * x) - lam * f(x)
        return d * d * math.exp(-0.5 * x * x) * _INV_SQRT_2PI

    # Split at 0, where piecewise activations have their kink, for an accurate adaptive fit.
    lo, _ = integrate.quad(integrand, -math.inf, 0.0, limit=200, epsabs=1e-14, epsrel=1e-10)
    hi, _ = integrate.quad(integrand, 0.0, math.inf, limit=200, epsabs=1e-14, epsrel=1e-10)
    return math.sqrt(max(lo + hi, 0.0))


def homogeneity_profile(
    fn: Callable[[torch.Tensor], torch.Tensor], lams: Iterable[float]
) -> list[tuple[float, float]]:
    """``[(lam, homogeneity_defect(fn, lam)), ...]`` for plotting."""
    return [(float(lam), homogeneity_defect(fn, float(lam))) for lam in lams]
