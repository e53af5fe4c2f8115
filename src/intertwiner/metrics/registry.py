"""Metrics with their options bound: a name, a callable, its invariances and a streaming form.

``metric("procrustes_similarity", group="positive_monomial")`` or the string spec
``"procrustes_similarity:positive_monomial"`` (``name:group``) gives a ``Metric`` whose
``.invariant_to`` reflects the options (the plain functions' ``.invariant_to`` is for their
defaults). ``compare`` and ``testing.assert_invariant`` accept these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from intertwiner.errors import InvalidInputError, InvalidOptionError
from intertwiner.metrics import _catalog
from intertwiner.metrics import group_cka as _gc
from intertwiner.metrics import procrustes as _pr
from intertwiner.metrics._groups import subgroups
from intertwiner.metrics.cka import cka
from intertwiner.metrics.cka import value_range as cka_value_range
from intertwiner.metrics.streaming import (
    Accumulator,
    LinearCKA,
    ProcrustesDistance,
    ProcrustesSimilarity,
)

NAMES = (
    "cka",
    "cka_debiased",
    "rbf_cka",
    "procrustes_distance",
    "procrustes_similarity",
    "group_cka",
    *_catalog.NAMES,
)


@dataclass(frozen=True)
class Metric:
    """A metric with bound options. Call it as ``m(X, Y)``; ``m.accumulator()`` streams it."""

    name: str
    fn: Callable[..., float]
    options: Mapping[str, Any] = field(default_factory=dict)
    invariant_to: tuple[str, ...] = ()
    higher_is_similar: bool = True
    make_accumulator: Callable[[], Accumulator] | None = None
    #: (low, high) of the values; CKA estimators that can be negative say so here.
    value_range: tuple[float, float] = (0.0, 1.0)

    def __call__(self, X: Any, Y: Any) -> float:
        return self.fn(X, Y, **self.options)

    @property
    def streaming(self) -> bool:
        return self.make_accumulator is not None

    @property
    def invariance(self) -> str:
        """The largest family in ``invariant_to`` (they are listed smallest first)."""
        return self.invariant_to[-1] if self.invariant_to else ""

    def accumulator(self) -> Accumulator:
        if self.make_accumulator is None:
            raise InvalidOptionError(
                f"metric {self.name!r} has no streaming form; it needs all samples"
            )
        return self.make_accumulator()


def metric(spec: str | Metric, **options: Any) -> Metric:
    """A ``Metric`` from a name in ``NAMES`` (optionally ``"name:group"``) and options."""
    if isinstance(spec, Metric):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"a metric is a name or a Metric, got {spec!r}; see NAMES")
    name, _, group = spec.partition(":")
    if group:
        options.setdefault("group", group)
    if name == "cka_debiased":
        name, options = "cka", {**options, "debiased": True}
    if name == "rbf_cka":
        name, options = "cka", {**options, "kernel": "rbf"}
    if name == "cka":
        debiased = bool(options.get("debiased", False))
        kernel = options.get("kernel", "linear")
        label = ("rbf_cka" if kernel == "rbf" else "cka") + ("_debiased" if debiased else "")
        acc = (lambda: LinearCKA(debiased=debiased)) if kernel == "linear" else None
        return Metric(
            label, cka, options, subgroups("orthogonal"), True, acc, cka_value_range(debiased)
        )
    if name in ("procrustes_distance", "procrustes_similarity"):
        g = _pr.procrustes_group(options.get("group", "orthogonal"))
        inv = subgroups(g)
        stream_opts = {k: v for k, v in options.items() if k != "group"}
        if name == "procrustes_distance":
            kind = options.get("kind", "angular")
            return Metric(
                f"procrustes_distance[{g},{kind}]",
                _pr.procrustes_distance,
                options,
                inv,
                False,
                lambda: ProcrustesDistance(group=g, **stream_opts),
                _pr.DISTANCE_RANGE[kind] if kind in _pr.KINDS else (0.0, math.pi),
            )
        return Metric(
            f"procrustes_similarity[{g}]",
            _pr.procrustes_similarity,
            options,
            inv,
            True,
            lambda: ProcrustesSimilarity(group=g, **stream_opts),
            _pr.similarity_range(g),
        )
    if name == "group_cka":
        group = options.get("group", "positive_monomial")
        g = _gc.group_cka_group(group)
        return Metric(
            f"group_cka[{g}]",
            _gc.group_cka,
            options,
            _gc.invariant_families(group),
            value_range=_gc.VALUE_RANGE,
        )
    if name in _catalog.NAMES:
        d = _catalog.describe(name, options)
        return Metric(
            d.label, d.fn, d.options, d.invariant_to, d.higher_is_similar, d.accumulator,
            d.value_range,
        )  # fmt: skip
    raise InvalidOptionError(
        f"unknown metric {spec!r}; choose one of {NAMES} (optionally 'name:group')"
    )
