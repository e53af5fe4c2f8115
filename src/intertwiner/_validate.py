"""The one validation layer at intertwiner's public boundary.

Every public function that takes user input checks it here, so the checks and their messages are
the same everywhere: tensors (real floating only; integers and bools converted explicitly, complex
refused), shapes and sizes, finite values, positive counts, options in range, permutations that are
permutations, scales that are finite and nonzero. Each failure raises a specific exception from
``intertwiner.errors`` whose message says what to do.

``reraise_shape_errors(call, inputs)`` turns the shape errors torch raises inside a user's model
(e.g. "mat1 and mat2 shapes cannot be multiplied") into our ``ShapeError`` naming the call and the
input shape we passed, with torch's error chained.

Bottom of the layering: imports only torch, numpy and ``intertwiner.errors``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from intertwiner.errors import (
    InvalidElementError,
    InvalidInputError,
    InvalidOptionError,
    NonFiniteError,
    ShapeError,
    TooFewSamplesError,
)

__all__ = [
    "check_finite",
    "choice",
    "device",
    "feature_tensor",
    "finite_number",
    "permutation",
    "positive_int",
    "real_tensor",
    "reraise_shape_errors",
    "scales",
    "square_matrix",
]


# ---- tensors ------------------------------------------------------------------------------------
def real_tensor(x: Any, name: str) -> torch.Tensor:
    """A detached real floating tensor from a tensor or numpy array.

    Floating dtypes are kept; integer and bool inputs are converted to float64 (explicitly, here,
    not by accident later); complex inputs are refused, since every metric and group here is real
    and dropping the imaginary part would be silently wrong.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USV":
            raise InvalidInputError(f"{name} is a numpy array of {x.dtype}; pass numbers")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise InvalidInputError(
            f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}; "
            "wrap lists with torch.tensor(...)"
        )
    if t.is_complex():
        raise InvalidInputError(
            f"{name} is complex ({t.dtype}); intertwiner works on real features. Pass the real "
            "part (x.real), the magnitude (x.abs()) or both stacked as neurons "
            "(torch.cat([x.real, x.imag], dim=1))"
        )
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def check_finite(t: torch.Tensor, name: str, hint: str = "") -> None:
    """Raise ``NonFiniteError`` when ``t`` holds NaN or Inf (counting them)."""
    # A finite sum means every value is finite (NaN or Inf anywhere makes the sum NaN or Inf): one
    # reduction instead of a mask; a sum that overflowed on finite values takes the full check.
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(
            f"{name} contain {bad} NaN/Inf value(s); "
            + (hint or "fix the model or data that produced them (e.g. a diverged run)")
        )


def feature_tensor(
    x: Any, name: str = "features", *, ndims: Sequence[int] = (2, 3, 4), finite: bool = True
) -> torch.Tensor:
    """Features (N, C), (N, T, D) or (N, C, H, W): real floating, no empty axis, finite.

    A zero-size axis (no samples, no neurons, an empty map) is refused: a representation without
    neurons is not a constant one, and comparing it would be meaningless.
    """
    t = real_tensor(x, name)
    if t.dim() not in ndims:
        raise ShapeError(
            f"{name} must be (N, C), (N, T, D) or (N, C, H, W); got shape {tuple(t.shape)}. "
            "Flatten other layouts yourself, keeping the neuron axis."
        )
    if t.shape[0] == 0:
        raise TooFewSamplesError(f"{name} have no samples (shape {tuple(t.shape)}); pass inputs")
    if 0 in t.shape[1:]:
        raise ShapeError(
            f"{name} have an empty axis (shape {tuple(t.shape)}): no neurons or positions to "
            "compare; check the layer you captured"
        )
    if finite:
        check_finite(
            t, name, "fix the model or data that produced them (e.g. a diverged run) before "
            "comparing representations"
        )  # fmt: skip
    return t


def square_matrix(m: Any, name: str = "matrix") -> torch.Tensor:
    """A real, finite, square 2-d floating tensor (integers converted to float64)."""
    t = real_tensor(m, name)
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ShapeError(f"{name} must be a square matrix, got shape {tuple(t.shape)}")
    check_finite(t, name, "pass a finite matrix")
    return t


# ---- numbers and options ------------------------------------------------------------------------
def positive_int(value: Any, name: str, *, minimum: int = 1, hint: str = "") -> int:
    """``value`` as an int >= ``minimum``; bools, floats with a fraction and strings are refused.

    The one check of every count (samples, epochs, repeats, ...) in the library and the CLI, so a
    negative count is never taken as a Python slice and every refusal reads the same."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        ok, value = True, int(value)
    if not ok:
        raise InvalidOptionError(
            f"{name} must be an integer of at least {minimum}, got {value!r}"
            + (f"; {hint}" if hint else "")
        )
    if int(value) < minimum:
        # the value as the user typed it (an int, not np.int64(-3)): the CLI shows this line as is
        raise InvalidOptionError(
            f"{name} must be at least {minimum}, got {int(value)}" + (f"; {hint}" if hint else "")
        )
    return int(value)


def finite_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float within [low, high] (open ends with ``low_open``/``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}")
    v = float(value)
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or lo_bad or hi_bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(p for p in (lo, hi) if p)
        raise InvalidOptionError(
            f"{name} must be a finite number{' ' + rng if rng else ''}, got {value!r}"
            + (f"; {hint}" if hint else "")
        )
    return v


def choice(value: Any, name: str, options: Sequence[Any]) -> Any:
    """``value`` if it is one of ``options``, else ``InvalidOptionError`` listing them."""
    try:
        ok = value in tuple(options)
    except TypeError:  # unhashable or incomparable values are not among the options
        ok = False
    if not ok:
        raise InvalidOptionError(
            f"unknown {name} {value!r}; choose one of {', '.join(map(repr, options))}"
        )
    return value


def device(value: Any, name: str = "device") -> torch.device:
    """A torch device that exists here: 'cpu', 'cuda', 'cuda:1', 'mps', ... (CUDA/MPS only
    when available), else ``InvalidOptionError`` saying which devices are."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidOptionError(
            f"unknown {name} {value!r}; use 'cpu', 'cuda' or 'cuda:N' (with a GPU) or 'mps'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(
            f"{name} {value!r} asked for, but CUDA is not available; use 'cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidOptionError(
            f"{name} {value!r}: only {torch.cuda.device_count()} CUDA device(s) here"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise InvalidOptionError(f"{name} {value!r} asked for, but MPS is not available; use 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps", "meta", "xpu"):
        raise InvalidOptionError(f"{name} {value!r} is not supported; use 'cpu' or 'cuda'")
    return dev


# ---- group elements -----------------------------------------------------------------------------
def permutation(perm: Any, name: str = "perm", n: int | None = None) -> torch.Tensor:
    """A 1-d long tensor holding each of 0..n-1 exactly once."""
    if isinstance(perm, (list, tuple)):
        perm = torch.as_tensor(perm)
    t = perm.detach() if isinstance(perm, torch.Tensor) else None
    if t is None and isinstance(perm, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(perm))
    if t is None:
        raise InvalidInputError(f"{name} must be a 1-d integer tensor, got {type(perm).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if t.is_complex() or t.dtype == torch.bool or not bool((t == t.round()).all()):
            raise InvalidElementError(f"{name} must hold integer indices, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ShapeError(f"{name} must be 1-d, got shape {tuple(t.shape)}")
    t = t.to(torch.long)
    size = t.shape[0] if n is None else n
    if t.shape[0] != size:
        raise ShapeError(f"{name} has {t.shape[0]} entries, the element needs {size}")
    if size and (int(t.min()) < 0 or int(t.max()) >= size):
        raise InvalidElementError(
            f"{name} has an index outside 0..{size - 1} (min {int(t.min())}, max "
            f"{int(t.max())}); a permutation of {size} items holds each of 0..{size - 1} once"
        )
    if size and int(torch.bincount(t, minlength=size).max()) > 1:
        repeated = sorted(
            set(torch.nonzero(torch.bincount(t, minlength=size) > 1).flatten().tolist())
        )
        raise InvalidElementError(
            f"{name} repeats index(es) {repeated[:5]}, so the matrix is singular; a permutation "
            f"holds each of 0..{size - 1} exactly once (e.g. torch.randperm({size}))"
        )
    return t


def scales(scale: Any, name: str = "scale", n: int | None = None) -> torch.Tensor:
    """A 1-d real floating tensor of finite, nonzero scales (the diagonal of an invertible D)."""
    t = real_tensor(scale, name)
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        want = "1-d" if n is None else f"1-d of length {n}"
        raise ShapeError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidElementError(
            f"{name} holds NaN/Inf; a group element's scales must be finite and nonzero "
            "(apply would write NaN weights)"
        )
    if bool((t == 0).any()):
        raise InvalidElementError(
            f"{name} holds a zero, so the element is singular; scales must be nonzero "
            "(positive for G_ReLU)"
        )
    return t


# ---- errors raised inside a user's model ---------------------------------------------------------
_SHAPE_MESSAGE = re.compile(
    r"shapes? cannot be|shape '\[|size mismatch|sizes? of tensors must match|must match the size|"
    r"expected input\[|input channels|to have \d+ channels|Expected .*\b(?:size|dim)\b|"
    r"Given groups|Given normalized_shape|mat\d and mat\d|should contain \d+ elements|"
    # pooling and convolution windows larger than the (too small) input:
    r"output size is too small|kernel size can't be greater|padded input size",
    re.IGNORECASE,
)
# A device or dtype clash is not the caller's input shape, even when the message mentions sizes.
_NOT_SHAPE = re.compile(r"device|dtype|scalar type", re.IGNORECASE)


def _describe(inputs: Any) -> str:
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, torch.Size) or (
        isinstance(inputs, tuple) and all(isinstance(d, int) for d in inputs)
    ):
        return f"shape {tuple(inputs)}"
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    if isinstance(inputs, torch.Tensor):
        return f"shape {tuple(inputs.shape)}"
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in inputs):
        return "shapes " + ", ".join(str(tuple(t.shape)) for t in inputs)
    return f"a {type(inputs).__name__}"


def _expected(model: Any) -> str:
    cfg = getattr(model, "intertwiner_config", None)
    if isinstance(cfg, dict) and "in_channels" in cfg and "input_size" in cfg:
        c, s = cfg["in_channels"], cfg["input_size"]
        return f"; this {cfg.get('arch', 'model')} expects (N, {c}, {s}, {s})"
    return ""


@contextmanager
def reraise_shape_errors(
    call: str, inputs: Any, model: Any = None, name: str = "the model"
) -> Iterator[None]:
    """Re-raise torch's shape errors from inside a model as ``ShapeError`` naming ``call``, the
    model (``name``, e.g. "model A") and the shape of ``inputs`` (and, for models from
    ``intertwiner.models``, the shape expected).

    ``inputs``: the tensor (or tensors) passed, a shape tuple, or a ready description.

    The original error is chained (``raise ... from``). Other errors pass through untouched.
    """
    try:
        yield
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not _SHAPE_MESSAGE.search(str(e)) or _NOT_SHAPE.search(str(e)):
            raise
        raise ShapeError(
            f"{call}: {name} could not run on the input of {_describe(inputs)} "
            f"({first}){_expected(model)}; pass inputs of the shape the model was built for"
        ) from e
