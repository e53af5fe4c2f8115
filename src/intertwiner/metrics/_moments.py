"""Centred second moments of two representations over positions: what the CCA family, linear
regression, the orthogonal shape metrics and soft matching need, and all they need.

Rows are sample *positions* (``to_matrix``: dense one per input, conv one per input and pixel,
tokens one per input and token) and columns are neurons, as for Procrustes: the groups act on the
neuron axis, and each position is one observation of every neuron (Raghu et al. treat conv channels
this way). X and Y need the same positions (``upsample=True`` upsamples the smaller conv map).

``CrossMoments`` holds ``xx = Xc'Xc``, ``yy = Yc'Yc`` and ``xy = Xc'Yc`` for the column-centred
matrices, in float64, after an exact power-of-two scaling per side (every measure built on them is
scale-free, so the scaling changes no value; it keeps squares clear of under- and overflow).
``MomentAccumulator`` builds the same statistics batch by batch (rows shifted by the first batch's
mean, which centring removes exactly), so every measure on moments streams.

Floor: the three products ``X'X``, ``Y'Y``, ``X'Y`` over the centred float64 (positions, neurons)
matrices, M (p^2 + q^2 + pq) multiply-adds; one centred float64 copy per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intertwiner import _products as products
from intertwiner import _validate
from intertwiner._types import FeatureLike
from intertwiner.errors import NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.layouts import to_matrix
from intertwiner.metrics._prep import (
    f64,
    match_positions,
    scale_exponent,
    times_power_of_two,
    validate,
)


@dataclass(frozen=True)
class CrossMoments:
    """Centred sums of products over ``n`` rows: ``xx`` (p, p), ``yy`` (q, q), ``xy`` (p, q)."""

    n: int
    xx: torch.Tensor
    yy: torch.Tensor
    xy: torch.Tensor

    def swapped(self) -> CrossMoments:
        """The moments of (Y, X)."""
        return CrossMoments(self.n, self.yy, self.xx, self.xy.T)

    def require(self, n: int, what: str) -> None:
        """``TooFewSamplesError`` unless there are at least ``n`` rows."""
        if self.n < n:
            raise TooFewSamplesError(
                f"{what} needs at least {n} sample positions, got {self.n}; pass more inputs"
            )


def position_rows(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (positions, neurons) matrices of X and Y, positions matched."""
    xt, yt = validate(X, "X", layout), validate(Y, "Y", layout)
    xt, yt = match_positions(xt, yt, upsample=upsample, layout_x=layout, layout_y=layout)
    return to_matrix(xt, layout), to_matrix(yt, layout)


def _scaled(m: torch.Tensor, exponent: torch.Tensor | None = None) -> torch.Tensor:
    e = scale_exponent(m) if exponent is None else exponent
    return times_power_of_two(f64(m), e)


def centred(m: torch.Tensor) -> torch.Tensor:
    """A power-of-two scaled, column-centred float64 copy of a (rows, neurons) matrix."""
    s = _scaled(m)
    return s - s.mean(0, keepdim=True)


def moments_of_rows(x: torch.Tensor, y: torch.Tensor) -> CrossMoments:
    """``CrossMoments`` of two (positions, neurons) matrices with the same rows."""
    xc, yc = centred(x), centred(y)
    return CrossMoments(x.shape[0], products.cov(xc), products.cov(yc), products.matmul(xc.T, yc))


def cross_moments(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> CrossMoments:
    """``CrossMoments`` of features X and Y (any layout; positions must match)."""
    return moments_of_rows(*position_rows(X, Y, upsample=upsample, layout=layout))


class MomentAccumulator:
    """Additive ``CrossMoments``: ``update`` with batches of features, ``moments()`` at any time.

    The first batch fixes each side's power-of-two scale and a shift (its mean); later batches are
    scaled and shifted the same way, so sums stay well conditioned. Batches may differ in size but
    not in per-sample shape."""

    def __init__(self, *, upsample: bool = False, layout: str | None = None) -> None:
        self.upsample, self.layout = upsample, layout
        self.n = 0
        self._exp: tuple[torch.Tensor, torch.Tensor] | None = None
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sums: list[torch.Tensor] = []

    def update(self, X: FeatureLike, Y: FeatureLike) -> None:
        x, y = position_rows(X, Y, upsample=self.upsample, layout=self.layout)
        if self._exp is None:
            self._exp = (scale_exponent(x, name="X"), scale_exponent(y, name="Y"))
        elif (x.shape[1], y.shape[1]) != tuple(s.shape[0] for s in self._shift):
            raise ShapeError(
                "neuron counts changed between batches; every batch must come from the same "
                "layers (start a new accumulator for a new comparison)"
            )
        xs, ys = _scaled(x, self._exp[0]), _scaled(y, self._exp[1])
        if self._shift is None:
            self._shift = (xs.mean(0), ys.mean(0))
        xs, ys = xs - self._shift[0], ys - self._shift[1]
        parts = [xs.sum(0), ys.sum(0), products.cov(xs), products.cov(ys)]
        parts.append(products.matmul(xs.T, ys))
        if not self._sums:
            self._sums = parts
        else:
            for total, part in zip(self._sums, parts, strict=True):
                total.add_(part)
        self.n += x.shape[0]

    def moments(self) -> CrossMoments:
        """The centred moments of every row seen so far."""
        if self.n == 0:
            raise TooFewSamplesError("no samples yet; call update(X, Y) with a batch first")
        sx, sy, xx, yy, xy = self._sums
        mx, my = sx / self.n, sy / self.n
        out = CrossMoments(
            self.n,
            xx - self.n * torch.outer(mx, mx),
            yy - self.n * torch.outer(my, my),
            xy - self.n * torch.outer(mx, my),
        )
        if not all(bool(torch.isfinite(t).all()) for t in (out.xx, out.yy, out.xy)):
            raise NonFiniteError(
                "moment sums overflowed; the batches differ in scale by more than about 1e150: "
                "rescale them to a common scale"
            )
        return out


def check_choice(value: object, name: str, options: tuple) -> None:
    """``InvalidOptionError`` unless ``value`` is one of ``options``."""
    _validate.choice(value, name, options)
