"""Metrics with their options bound: a name, a callable, its invariances and a streaming form.

``metric("procrustes_similarity", group="positive_monomial")`` or the string spec
``"procrustes_similarity:positive_monomial"`` (``name:group``) gives a ``Metric`` whose
``.invariant_to`` reflects the options (the plain functions' ``.invariant_to`` is for their
defaults). ``compare`` and ``testing.assert_invariant`` accept these.

Each metric module registers one ``Measure`` (``_metric.register``); this module imports the
built-in ones and looks names up in the one registry. A new metric is one module with one
``register(...)`` call, and ``pairwise``/``compare`` handle it through the ``Measure``'s methods.
"""

from __future__ import annotations

from typing import Any

from intertwiner.errors import InvalidInputError, InvalidOptionError

# The built-in metric modules register their measures on import.
from intertwiner.metrics import _catalog, _cka_measure, _group_cka_measure, _procrustes_measure
from intertwiner.metrics._metric import REGISTRY, Measure, Metric, register, unregister

#: The built-in metric names (``names()`` also lists metrics registered later).
NAMES = (
    *_cka_measure.CKA.names,
    *_procrustes_measure.PROCRUSTES.names,
    *_group_cka_measure.GROUP_CKA.names,
    *_catalog.NAMES,
)

__all__ = ["NAMES", "Measure", "Metric", "metric", "names", "register", "unregister"]


def names() -> tuple[str, ...]:
    """Every registered metric name, built-in and registered since."""
    return tuple(REGISTRY)


def metric(spec: str | Metric, **options: Any) -> Metric:
    """A ``Metric`` from a registered name (optionally ``"name:group"``) and options."""
    if isinstance(spec, Metric):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"a metric is a name or a Metric, got {spec!r}; see NAMES")
    name, _, group = spec.partition(":")
    if group:
        options.setdefault("group", group)
    measure = REGISTRY.get(name)
    if measure is None:
        raise InvalidOptionError(
            f"unknown metric {spec!r}; choose one of {names()} (optionally 'name:group')"
        )
    return measure.bind(name, options)
