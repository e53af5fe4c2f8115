"""Input handling shared by every metric: layouts, validation, padding and upsampling.

Layouts of a feature tensor (the neuron axis is the one a group element acts on):

- ``"dense"``  (N, C): N samples, C neurons.
- ``"conv"``   (N, C, H, W): channels are the neurons, the same at every pixel.
- ``"tokens"`` (N, T, D): D is the neuron axis, the same at every token.

``to_matrix`` turns any layout into a (samples, neurons) matrix with one row per sample *position*
(conv: N*H*W rows; tokens: N*T rows); Procrustes metrics work on that matrix. ``to_flat`` gives one
row per input (conv: (N, C*H*W)); CKA-type metrics compare N x N kernels over inputs, so layers with
different spatial sizes can be compared.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from intertwiner import _validate
from intertwiner.errors import ShapeError

LAYOUTS = ("dense", "conv", "tokens")
_NDIM_TO_LAYOUT = {2: "dense", 3: "tokens", 4: "conv"}


def as_tensor(x: Any, name: str = "features") -> torch.Tensor:
    """A real floating tensor from a tensor or numpy array (see ``_validate.real_tensor``)."""
    return _validate.real_tensor(x, name)


def infer_layout(x: torch.Tensor, layout: str | None = None) -> str:
    """The layout of ``x``: given explicitly, or from its number of dimensions (2, 3 or 4)."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise ShapeError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        want = {v: k for k, v in _NDIM_TO_LAYOUT.items()}[layout]
        if x.dim() != want:
            raise ShapeError(
                f"layout {layout!r} needs a {want}-d tensor, got shape {tuple(x.shape)}"
            )
        return layout
    if x.dim() not in _NDIM_TO_LAYOUT:
        raise ShapeError(
            f"features must be (N, C), (N, T, D) or (N, C, H, W); got shape {tuple(x.shape)}. "
            "Flatten other layouts yourself, keeping the neuron axis."
        )
    return _NDIM_TO_LAYOUT[x.dim()]


def neuron_dim(x: torch.Tensor, layout: str | None = None) -> int:
    """The axis of ``x`` that holds the neurons (1 for dense and conv, 2 for tokens)."""
    return 2 if infer_layout(x, layout) == "tokens" else 1


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


def unit_scale(x: torch.Tensor, per_column: bool = False) -> torch.Tensor:
    """``x`` times a power of two that brings its largest magnitude into [0.5, 1) (one power per
    entry of the last axis with ``per_column=True``); all-zero parts are left alone.

    Every metric here is scale-free, so this changes no value, but it keeps squares and products
    away from float64 underflow and overflow (features of 1e-170 or 1e160 would otherwise square
    to 0 or Inf). Multiplying by a power of two is exact, so ordinary inputs give the same values.
    """
    return times_power_of_two(x, scale_exponent(x, per_column))


def scale_exponent(
    x: torch.Tensor, per_column: bool = False, name: str = "features"
) -> torch.Tensor:
    """The exponents ``unit_scale`` uses (kept by streaming metrics for later batches): one, or one
    per entry of the last axis. NaN/Inf in ``x`` raise ``NonFiniteError`` (the peak sees them)."""
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

    def power(k: torch.Tensor) -> torch.Tensor:  # 2**k, exact
        return torch.ldexp(torch.ones(k.shape, dtype=torch.float64, device=k.device), k)

    if bool((e.abs() <= 1020).all()):
        return torch.mul(x, power(e), out=out)
    half = torch.div(e, 2, rounding_mode="floor")
    return torch.mul(x * power(half), power(e - half), out=out)


def to_matrix(features: Any, layout: str | None = None) -> torch.Tensor:
    """(samples, neurons): dense (N, C) as is; conv (N*H*W, C); tokens (N*T, D). Dtype kept."""
    x = as_tensor(features)
    lay = infer_layout(x, layout)
    if lay == "dense":
        return x
    if lay == "conv":
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[2])


def to_flat(features: Any, layout: str | None = None) -> torch.Tensor:
    """(N, everything else): one row per input, for kernels over inputs (CKA)."""
    x = as_tensor(features)
    infer_layout(x, layout)
    return x.reshape(x.shape[0], -1)


def to_sites(features: Any, layout: str | None = None) -> torch.Tensor:
    """(N, S, C): per input, S positions (pixels or tokens; 1 for dense) times C neurons."""
    x = as_tensor(features)
    lay = infer_layout(x, layout)
    if lay == "dense":
        return x.unsqueeze(1)
    if lay == "conv":
        return x.flatten(2).transpose(1, 2)
    return x


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


def pad_columns(m: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a (rows, C) matrix to ``width`` columns (the paper pads the smaller layer)."""
    if m.shape[1] == width:
        return m
    return F.pad(m, (0, width - m.shape[1]))


def f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)
