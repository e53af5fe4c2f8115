"""Centred second moments of two representations over positions: what the CCA family, linear
regression, the orthogonal shape metrics and soft matching need, and all they need.

Rows are sample *positions* (``to_matrix``: dense one per input, conv one per input and pixel,
tokens one per input and token) and columns are neurons, as for Procrustes: the groups act on the
neuron axis, and each position is one observation of every neuron (Raghu et al. treat conv channels
this way). X and Y need the same positions (``upsample=True`` upsamples the smaller conv map).

``CrossMoments`` holds ``xx = Xc'Xc``, ``yy = Yc'Yc`` and ``xy = Xc'Yc`` for the column-centred
matrices, in float64, after an exact power-of-two scaling per side (every measure built on them is
scale-free, so the scaling changes no value; it keeps squares clear of under- and overflow).
``MomentAccumulator`` builds the same statistics batch by batch in the one paired-moment
accumulator, ``intertwiner._paired.PairedMoments`` (rows shifted by the first batch's mean, which
centring removes exactly), so every measure on moments streams.

Floor: the three products ``X'X``, ``Y'Y``, ``X'Y`` over the centred float64 (positions, neurons)
matrices, M (p^2 / 2 + q^2 / 2 + pq) multiply-adds (symmetric products by rank-k updates). The
features are walked in cache-sized neuron-major blocks in their own layout (``neuron_blocks``:
dense and token float64 features as views, conv features one small copy per block), each block
scaled and shifted in cache: no whole-tensor copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intertwiner import _validate
from intertwiner._paired import PairedMoments
from intertwiner._types import FeatureLike
from intertwiner.errors import NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.layouts import (
    block_samples,
    copies,
    n_positions,
    neuron_blocks,
    to_matrix,
    width,
)
from intertwiner.metrics._prep import (
    f64,
    match_positions,
    scale_exponent,
    times_power_of_two,
    validate,
)

#: Fewest rows per block of the moment products.
MIN_BLOCK_ROWS = 2048


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
    xt, yt = matched(X, Y, upsample=upsample, layout=layout)
    return to_matrix(xt, layout), to_matrix(yt, layout)


def matched(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated X and Y in their own layouts, positions matched (NaN/Inf are found by
    ``scale_exponent``'s pass, not a separate one)."""
    xt, yt = validate(X, "X", layout, finite=False), validate(Y, "Y", layout, finite=False)
    return match_positions(xt, yt, upsample=upsample, layout_x=layout, layout_y=layout)


def _scaled(m: torch.Tensor, exponent: torch.Tensor | None = None) -> torch.Tensor:
    e = scale_exponent(m) if exponent is None else exponent
    return times_power_of_two(f64(m), e)


def centred(m: torch.Tensor) -> torch.Tensor:
    """A power-of-two scaled, column-centred float64 copy of a (rows, neurons) matrix."""
    s = _scaled(m)
    return s.sub_(s.mean(0, keepdim=True))


def _sums(x: torch.Tensor, y: torch.Tensor, layout: str | None) -> PairedMoments:
    """Empty full, shifted float64 paired moments for features x and y: the one accumulator
    (rows shifted by the first block's mean, which centring removes exactly; it keeps the sums
    well conditioned)."""
    return PairedMoments(width(x, layout), width(y, layout), x.device, shift=True, exact=True)


def _moments_of(sums: PairedMoments) -> CrossMoments:
    if sums.n == 0:
        raise TooFewSamplesError("no samples yet; call update(X, Y) with a batch first")
    out = CrossMoments(sums.n, *sums.centred())
    if not all(bool(torch.isfinite(t).all()) for t in (out.xx, out.yy, out.xy)):
        raise NonFiniteError(
            "moment sums overflowed; the batches differ in scale by more than about 1e150: "
            "rescale them to a common scale"
        )
    return out


def _scaled_block(blk: torch.Tensor, exponent: torch.Tensor, copied: bool) -> torch.Tensor:
    """A neuron-major block times 2**exponent: in place on a scratch copy, else a new tensor."""
    return times_power_of_two(blk, exponent, out=blk if copied else None)


def _add_features(
    sums: PairedMoments, x: torch.Tensor, y: torch.Tensor, exps: tuple, layout: str | None
) -> None:
    """Walk X and Y in paired neuron-major blocks of the same rows, in their own layouts."""
    # Cache-sized blocks, but at least MIN_BLOCK_ROWS rows: thinner rank-k updates lose BLAS speed.
    step = max(
        min(block_samples(x, layout), block_samples(y, layout)),
        -(-MIN_BLOCK_ROWS // n_positions(x, layout)),
    )
    f64_ = torch.float64
    cx, cy = copies(x, layout, f64_), copies(y, layout, f64_)
    for bx, by in zip(
        neuron_blocks(x, layout, dtype=f64_, samples=step),
        neuron_blocks(y, layout, dtype=f64_, samples=step),
        strict=True,
    ):
        # neuron-major (C, rows) blocks, scratch copies or fresh tensors: given as row views
        sx, sy = _scaled_block(bx, exps[0], cx), _scaled_block(by, exps[1], cy)
        sums.update(sx.T, sy.T, scratch=True)


def cross_moments(
    X: FeatureLike, Y: FeatureLike, *, upsample: bool = False, layout: str | None = None
) -> CrossMoments:
    """``CrossMoments`` of features X and Y (any layout; positions must match), computed block by
    block in the features' own layouts (no whole-tensor copy)."""
    x, y = matched(X, Y, upsample=upsample, layout=layout)
    sums = _sums(x, y, layout)
    exps = (scale_exponent(x, name="X"), scale_exponent(y, name="Y"))
    _add_features(sums, x, y, exps, layout)
    return _moments_of(sums)


class MomentAccumulator:
    """Additive ``CrossMoments``: ``update`` with batches of features, ``moments()`` at any time.

    The first batch fixes each side's power-of-two scale and a shift (its first block's mean);
    later batches are scaled and shifted the same way, so sums stay well conditioned. Batches may
    differ in size but not in neuron counts."""

    def __init__(self, *, upsample: bool = False, layout: str | None = None) -> None:
        self.upsample, self.layout = upsample, layout
        self._sums: PairedMoments | None = None
        self._exp: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return 0 if self._sums is None else self._sums.n

    def update(self, X: FeatureLike, Y: FeatureLike) -> None:
        x, y = matched(X, Y, upsample=self.upsample, layout=self.layout)
        if self._exp is None or self._sums is None:
            self._exp = (scale_exponent(x, name="X"), scale_exponent(y, name="Y"))
            self._sums = _sums(x, y, self.layout)
        else:
            for t, name in ((x, "X"), (y, "Y")):
                scale_exponent(t, name=name)  # NaN/Inf raise here, before the sums change
            widths = (width(x, self.layout), width(y, self.layout))
            if widths != self._sums.widths:
                raise ShapeError(
                    "neuron counts changed between batches; every batch must come from the "
                    "same layers (start a new accumulator for a new comparison)"
                )
        _add_features(self._sums, x, y, self._exp, self.layout)

    def moments(self) -> CrossMoments:
        """The centred moments of every row seen so far."""
        if self._sums is None:
            raise TooFewSamplesError("no samples yet; call update(X, Y) with a batch first")
        return _moments_of(self._sums)


def check_choice(value: object, name: str, options: tuple) -> None:
    """``InvalidOptionError`` unless ``value`` is one of ``options``."""
    _validate.choice(value, name, options)
