"""Declarations shared by the similarity measures: the group a measure is invariant to, its range.

Each measure function carries ``.invariance`` (the name of the largest group family it is
invariant to, for its default options), ``.invariant_to`` (that family, its subgroups and ``c P``,
as the other metrics declare: ``_groups.invariances``), ``.value_range`` and
``.higher_is_similar``. Options that change the group (e.g. ``svcca(variance=1.0)``, which keeps
every direction and so is invariant to GL) are answered by the registry's ``Metric``, whose
``invariant_to`` follows the options.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TypeVar

from intertwiner.groups import Family, family
from intertwiner.metrics._groups import invariances

F = TypeVar("F", bound=Callable)


def measure(
    invariance: str | Family, value_range: tuple[float, float], higher_is_similar: bool = True
) -> Callable[[F], F]:
    """Decorator: attach ``.invariance``, ``.invariant_to``, ``.value_range``, ``.higher_is_similar``."""
    fam = family(invariance)

    def wrap(fn: F) -> F:
        fn.invariant_to = invariances(fam)  # type: ignore[attr-defined]
        fn.invariance = fn.invariant_to[-1]  # type: ignore[attr-defined]
        fn.value_range = tuple(value_range)  # type: ignore[attr-defined]
        fn.higher_is_similar = higher_is_similar  # type: ignore[attr-defined]
        return fn

    return wrap


def undefined(what: str, value: float = 0.0) -> float:
    """Warn that ``what`` is undefined (0/0) and return the documented ``value``, never NaN."""
    warnings.warn(f"{what}; returning {value}", RuntimeWarning, stacklevel=3)
    return value


def clip(value: float, low: float, high: float) -> float:
    """``value`` in [low, high]: the bounds hold exactly, only round-off steps over them."""
    if not math.isfinite(value):
        raise AssertionError(f"non-finite measure value {value!r}: please report this")
    return float(min(max(value, low), high))
