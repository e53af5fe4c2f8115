"""The one paired-moment accumulator: streaming float64 sums of two feature sets' rows.

``PairedMoments(p, q)`` takes rows ``x`` (M, p) and ``y`` (M, q) of the same M samples, batch by
batch, and keeps ``n``, the column sums ``sx`` (p,), ``sy`` (q,), the second moments ``sxx`` =
x'x and ``syy`` = y'y (full, or only their diagonals with ``full_x``/``full_y=False``: half the
work, and all that monomial fits need) and the cross moment ``sxy`` = x'y (p, q). Alignment,
stitching's ``FeatureStats``, Procrustes' ``ProcrustesStats`` and the moment measures' sums are
this class.

Precision: every sum is float64. float64 rows are multiplied in float64; lower-precision rows
(unless ``exact=True``) in float32 over blocks of at most ``block_rows`` rows, each block's
product added to the float64 totals (float64 products run several times slower on CPU and the
features carry float32 precision only). ``shift=True`` subtracts the first batch's column means
from every row before the sums (centring is shift invariant; the shift keeps the centred moments
clear of cancellation); then only the ``centred`` moments are offered. Any batching gives the
one-shot sums up to round-off.
"""

from __future__ import annotations

import torch

from intertwiner import _products as products
from intertwiner.errors import InvalidOptionError, NonFiniteError, ShapeError, TooFewSamplesError

F64 = torch.float64


class PairedMoments:
    """Streaming float64 sums of paired rows (see the module docstring)."""

    def __init__(
        self,
        p: int,
        q: int,
        device: torch.device | str | None = None,
        *,
        full_x: bool = True,
        full_y: bool = True,
        shift: bool = False,
        exact: bool | None = None,
        block_rows: int = 4096,
    ) -> None:
        kw = dict(dtype=F64, device=device)
        self.n = 0
        self.full_x, self.full_y, self.exact = bool(full_x), bool(full_y), exact
        self.block_rows = max(int(block_rows), 1)
        self.shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._shifted = bool(shift)
        self._sums_known = True
        self.sx, self.sy = torch.zeros(p, **kw), torch.zeros(q, **kw)
        self.sxx = torch.zeros(p, p, **kw) if full_x else torch.zeros(p, **kw)
        self.syy = torch.zeros(q, q, **kw) if full_y else torch.zeros(q, **kw)
        self.sxy = torch.zeros(p, q, **kw)

    @property
    def widths(self) -> tuple[int, int]:
        return self.sx.shape[0], self.sy.shape[0]

    def update(self, x: torch.Tensor, y: torch.Tensor, *, scratch: bool = False) -> None:
        """Add rows ``x`` (M, p) and ``y`` (M, q). ``scratch=True``: the caller's tensors may be
        overwritten (the shift is then subtracted in place, without a copy)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ShapeError(f"paired features need (M, p), (M, q) rows, got {x.shape}, {y.shape}")
        if (x.shape[1], y.shape[1]) != self.widths:
            raise ShapeError(
                f"paired features have widths {(x.shape[1], y.shape[1])}, these moments "
                f"{self.widths}: every batch must come from the same layers"
            )
        exact = self.exact if self.exact is not None else F64 in (x.dtype, y.dtype)
        work = F64 if exact else torch.float32
        dev = self.sx.device
        x0, y0 = x, y
        x, y = x.to(device=dev, dtype=work), y.to(device=dev, dtype=work)
        if self._shifted:
            if self.shift is None:
                self.shift = (x.mean(0, dtype=F64), y.mean(0, dtype=F64))
            own = scratch or x is not x0
            x = x.sub_(self.shift[0].to(work)) if own else x - self.shift[0].to(work)
            own = scratch or y is not y0
            y = y.sub_(self.shift[1].to(work)) if own else y - self.shift[1].to(work)
        sx, sy = x.sum(0, dtype=F64), y.sum(0, dtype=F64)
        # A NaN or Inf anywhere makes its column sum non-finite: O(C) check instead of O(size).
        if not (torch.isfinite(sx).all() and torch.isfinite(sy).all()):
            raise NonFiniteError("features contain NaN or Inf; check the models and the data")
        self.n += x.shape[0]
        self.sx += sx
        self.sy += sy
        if not self.full_x:
            self.sxx += (x * x).sum(0, dtype=F64)
        if not self.full_y:
            self.syy += (y * y).sum(0, dtype=F64)
        step = x.shape[0] if exact else self.block_rows
        for start in range(0, x.shape[0], max(step, 1)):
            xb, yb = x[start : start + step], y[start : start + step]
            if exact:  # float64 products straight into the totals
                if self.full_x:
                    products.add_cov_(self.sxx, xb)
                if self.full_y:
                    products.add_cov_(self.syy, yb)
                products.add_matmul_(self.sxy, xb.T, yb)
                continue
            if self.full_x:
                self.sxx += products.cov(xb).to(F64)
            if self.full_y:
                self.syy += products.cov(yb).to(F64)
            self.sxy += products.matmul(xb.T, yb).to(F64)

    def add(
        self,
        rows: int,
        sxx: torch.Tensor,
        syy: torch.Tensor,
        sxy: torch.Tensor,
        sx: torch.Tensor | None = None,
        sy: torch.Tensor | None = None,
    ) -> None:
        """Add sums the caller formed itself (e.g. products walked in a conv layout without a
        copy), in the kept forms. Without ``sx``/``sy`` the column sums are unknown from then on
        and only ``raw`` moments are offered."""
        if self._shifted:
            raise InvalidOptionError("shifted moments take rows (update), not precomputed sums")
        if sx is None or sy is None:
            self._sums_known = False
        else:
            self.sx += sx
            self.sy += sy
        self.sxx += sxx
        self.syy += syy
        self.sxy += sxy
        self.n += int(rows)

    def merge(self, other: PairedMoments) -> None:
        """Add another accumulator's sums (same widths and forms, no shift)."""
        if self._shifted or other._shifted:
            raise InvalidOptionError("shifted moments cannot be merged; accumulate in one")
        self.add(other.n, other.sxx, other.syy, other.sxy, other.sx, other.sy)
        self._sums_known &= other._sums_known

    def require(self, n: int) -> None:
        if self.n < n:
            raise TooFewSamplesError(f"need at least {n} feature samples, got {self.n}")

    def raw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x'x, y'y, x'y)`` about zero (forms as kept); not for shifted moments."""
        if self._shifted:
            raise InvalidOptionError("these moments are shifted; use centred()")
        return self.sxx, self.syy, self.sxy

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sums of products of the column-centred rows: ``(Xc'Xc, Yc'Yc, Xc'Yc)``."""
        self.require(1)
        if not self._sums_known:
            raise InvalidOptionError("column sums were not kept (add without sx, sy): no centring")
        mx, my = self.sx / self.n, self.sy / self.n
        xx = self.sxx - self.n * (torch.outer(mx, mx) if self.full_x else mx * mx)
        yy = self.syy - self.n * (torch.outer(my, my) if self.full_y else my * my)
        return xx, yy, self.sxy - self.n * torch.outer(mx, my)


__all__ = ["PairedMoments"]
