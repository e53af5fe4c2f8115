"""Numerical verification of the intertwining identity sigma(A x) = phi(A) sigma(x)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from intertwiner import _validate
from intertwiner.errors import InvalidInputError
from intertwiner.groups._group import IntertwinerGroup


def verify(
    group: IntertwinerGroup,
    fn: Callable[[torch.Tensor], torch.Tensor],
    n: int = 8,
    trials: int = 16,
    samples: int = 256,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    relative: bool = False,
) -> float:
    """Max |sigma(A x) - phi(A) sigma(x)| over ``trials`` sampled A and ``samples`` x each.

    x is drawn as 3 * N(0, 1) so that saturating regions are exercised. With ``relative=True`` the
    error is divided by max |sigma(A x)| (useful for polynomial activations with large outputs).
    """
    fn = as_function(fn, dtype)
    n = _validate.positive_int(n, "n")
    trials = _validate.positive_int(trials, "trials", hint="verifying zero elements proves nothing")
    samples = _validate.positive_int(samples, "samples")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for _ in range(trials):
            a = group.sample(n, generator=generator, dtype=dtype)
            x = 3.0 * torch.randn(samples, n, generator=generator, dtype=torch.float64).to(dtype)
            lhs = fn(a.apply(x, dim=1))
            rhs = group.phi(a).apply(fn(x), dim=1)
            err = (lhs - rhs).abs().max()
            if relative:
                err = err / lhs.abs().max().clamp_min(torch.finfo(dtype).tiny)
            if not torch.isfinite(err):
                return float("inf")
            worst = max(worst, float(err))
    return worst


def as_function(
    fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A module is copied to ``dtype`` in eval mode (PReLU needs matching dtypes, RReLU eval).

    A name or other non-callable is refused with ``InvalidInputError`` (names go through
    ``for_activation``)."""
    if isinstance(fn, str):
        raise InvalidInputError(
            f"expected a function or module, got the string {fn!r}; for a named activation use "
            f"intertwiner.groups.for_activation({fn!r}), or pass the function itself "
            "(e.g. torch.relu)"
        )
    if not callable(fn):
        raise InvalidInputError(
            f"expected a callable elementwise function or nn.Module, got {type(fn).__name__}"
        )
    if isinstance(fn, nn.Module):
        return copy.deepcopy(fn).to(dtype).eval()
    return fn
