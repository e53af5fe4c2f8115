"""Input handling shared by every metric: validation, exact power-of-two scaling, padding and
upsampling. Layouts ((N, C), (N, C, H, W), (N, T, D)) and their views live in ``intertwiner.layouts``:
Procrustes metrics work on the (positions, neurons) matrix, CKA-type metrics on one row per input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from intertwiner import _validate
from intertwiner.errors import ShapeError
from intertwiner.layouts import infer as infer_layout


def check_finite(x: torch.Tensor, name: str = "features") -> None:
    """``NonFiniteError`` when ``x`` holds NaN/Inf (see ``_validate.check_finite``)."""
    _validate.check_finite(
        x, name, "fix the model or data that produced them (e.g. a diverged run) before "
        "comparing representations"
    )  # fmt: skip


def validate(
    x: Any, name: str = "features", layout: str | None = None, *, finite: bool = True
) -> torch.Tensor:
    """Real floating tensor (integers converted, complex refused), finite (unless
    ``finite=False``: the caller checks), known layout, no empty axis; floating dtypes unchanged."""
    t = _validate.feature_tensor(x, name, finite=finite)
    infer_layout(t, layout)
    return t


def scale_exponent(
    x: torch.Tensor, per_column: bool = False, name: str = "features"
) -> torch.Tensor:
    """Exponents e with ``x * 2**e`` of largest magnitude in [0.5, 1) (kept by streaming metrics for
    later batches): one, or one per entry of the last axis. Every metric is scale-free, so this
    changes no value; it keeps squares clear of float64 underflow and overflow. NaN/Inf in ``x`` raise ``NonFiniteError`` (the peak sees them)."""
    if per_column and x.dim() > 1:
        dims = tuple(range(x.dim() - 1))
        peak = torch.maximum(x.amax(dim=dims), -x.amin(dim=dims))
    else:
        lo, hi = torch.aminmax(x)
        peak = torch.maximum(hi, -lo)
    if not bool(torch.isfinite(peak).all()):
        check_finite(x, name)
    return -torch.frexp(peak).exponent.to(torch.int64)


def times_power_of_two(
    x: torch.Tensor, exponent: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * 2**exponent`` exactly (``exponent`` broadcasts against ``x``), into ``out`` if given.

    One multiplication when every 2**e is a normal float64, else two halves (|e| may exceed 1023
    for subnormal or huge inputs)."""
    e = exponent.to(x.device)
    if bool((e.abs() <= 1020).all()):
        return torch.mul(x, _power(e), out=out)
    half = torch.div(e, 2, rounding_mode="floor")
    return torch.mul(x * _power(half), _power(e - half), out=out)


def times_outer_power_of_two(m: torch.Tensor, ex: torch.Tensor, ey: torch.Tensor) -> torch.Tensor:
    """``m * 2**(ex[:, None] + ey[None, :])`` exactly, for ``m`` (C_x, C_y): one multiplication
    by the outer product of the two power vectors (each entry 2**(ex_i + ey_j), exact while
    every |ex_i| + |ey_j| <= 1020) instead of a (C_x, C_y) exponent matrix."""
    if int(ex.abs().max()) + int(ey.abs().max()) > 1020:
        return times_power_of_two(m, ex.view(-1, 1) + ey.view(1, -1))
    return m * torch.outer(_power(ex.to(m.device)), _power(ey.to(m.device)))


def _power(k: torch.Tensor) -> torch.Tensor:
    """2**k as float64, exact for |k| <= 1022."""
    return torch.ldexp(torch.ones(k.shape, dtype=torch.float64, device=k.device), k)


def check_same_n(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"X has {x.shape[0]} samples and Y has {y.shape[0]}: both representations must come "
            "from the same inputs, in the same order"
        )


def match_positions(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    upsample: bool = False,
    layout_x: str | None = None,
    layout_y: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make conv spatial sizes (or token counts) equal so rows of ``to_matrix`` correspond.

    Differing sizes are an error unless ``upsample=True``, which upsamples the smaller map by
    nearest neighbour to the larger one, as the paper does (sizes must then divide evenly, e.g.
    8x8 -> 16x16). Token counts must always match.
    """
    lx, ly = infer_layout(x, layout_x), infer_layout(y, layout_y)
    check_same_n(x, y)
    if lx != ly:
        raise ShapeError(
            f"cannot compare a {lx} layout {tuple(x.shape)} with a {ly} layout "
            f"{tuple(y.shape)} position by position; use CKA, which compares inputs"
        )
    if lx == "tokens" and x.shape[1] != y.shape[1]:
        raise ShapeError(f"token counts differ: {x.shape[1]} vs {y.shape[1]}")
    if lx != "conv" or x.shape[2:] == y.shape[2:]:
        return x, y
    if not upsample:
        raise ShapeError(
            f"spatial sizes differ: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}; pass "
            "upsample=True to upsample the smaller map by nearest neighbour (the paper's choice)"
        )
    big = (max(x.shape[2], y.shape[2]), max(x.shape[3], y.shape[3]))
    for s in (x.shape[2:], y.shape[2:]):
        if big[0] % s[0] or big[1] % s[1]:
            raise ShapeError(
                f"cannot upsample {tuple(s)} to {big} by an integer factor; crop or pool first"
            )

    def up(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape[2:]) == big:
            return t
        src = t if t.is_floating_point() else t.double()
        return F.interpolate(src, size=big, mode="nearest")

    return up(x), up(y)


def f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def within(value: float, value_range: tuple[float, float]) -> float:
    """``value`` clipped to its metric's documented ``value_range`` (low, high): the one place
    every metric's result is held to its range. The bounds hold exactly in real arithmetic; only
    round-off steps over them (-2.2e-16 for a similarity in [0, 1]). NaN passes through: it is a
    bug to report, not a value to clip."""
    low, high = value_range
    return float(value) if math.isnan(value) else float(min(max(value, low), high))
