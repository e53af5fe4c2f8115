"""The group of an activation *call*: a functional or tensor method with its arguments.

``F.hardtanh(x, 0.0, 6.0)`` is not the default Hardtanh (bounds -1, 1): a call with arguments is
classified numerically (``groups.discover``) on the function with those arguments bound, and named
after the activation. A call without arguments uses the activation table.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from intertwiner.errors import IntertwinerError, UnsupportedModuleError
from intertwiner.groups import IntertwinerGroup, discover, for_activation

_IGNORED_KWARGS = {"inplace"}
_SCALARS = (int, float, bool, str, type(None))


def activation_group(
    target: Any, args: tuple, kwargs: dict, where: str, *, method: bool
) -> IntertwinerGroup | None:
    """The group of ``target(x, *args, **kwargs)`` (or ``x.target(*args, **kwargs)`` when
    ``method``); None when ``target`` is not an elementwise activation."""
    kw = {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}
    label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if not args and not kw:
        try:
            return for_activation(target)
        except IntertwinerError:
            return None
    if not all(isinstance(v, _SCALARS) for v in (*args, *kw.values())):
        raise UnsupportedModuleError(
            f"{label} in {where!r} is called with tensor arguments, so it is not one elementwise "
            "function of its input; pass plain numbers, or make it a module"
        )
    return _discover_call(target, tuple(args), tuple(sorted(kw.items())), method, label)


@lru_cache(maxsize=256)
def _discover_call(
    target: Any, args: tuple, kw: tuple, method: bool, label: str
) -> IntertwinerGroup | None:
    kwargs = dict(kw)
    if method:

        def fn(z: torch.Tensor) -> torch.Tensor:
            return getattr(z, target)(*args, **kwargs)
    else:

        def fn(z: torch.Tensor) -> torch.Tensor:
            return target(z, *args, **kwargs)

    try:
        for_activation(target)  # only calls of known activations are classified
    except IntertwinerError:
        if not _is_elementwise_candidate(target):
            return None
    shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kw)])
    group = discover(_named(fn, f"{label}({shown})"))
    return IntertwinerGroup(group.family, group.phi_kind, f"G_{label}({shown})", group.evidence)


# Functions that take extra numbers but are not in the activation table by name.
_CANDIDATES = {"clamp", "clip", "clamp_min", "clamp_max", "threshold", "leaky_relu", "hardtanh"}


def _is_elementwise_candidate(target: Any) -> bool:
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return name.rstrip("_") in _CANDIDATES


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name
    return fn
