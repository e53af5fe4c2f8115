"""The similarity measures beyond CKA and Procrustes, as the registry sees them: for each name, the
function, the group its options make it invariant to, its range, and a streaming form where the
sufficient statistics allow (the second moments: the CCA family, regression, the orthogonal shape
metric and soft matching).

``describe(name, options)`` checks the options against the function's signature and answers what
``registry.metric`` needs to build a ``Metric``; each entry is registered as a ``CatalogMeasure``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from intertwiner.errors import InvalidOptionError
from intertwiner.metrics import _cca, _knn, _predictivity, _regression, _rsa, _shape, _stochastic
from intertwiner.metrics._groups import invariances
from intertwiner.metrics._metric import Measure, Metric, register
from intertwiner.metrics._moments import MomentAccumulator
from intertwiner.metrics.streaming import Accumulator

#: Options that say how to read the features, not what to compute.
_READING = ("upsample", "layout")


@dataclass(frozen=True)
class Entry:
    fn: Callable[..., float]
    invariance: Callable[..., str]
    value_range: Callable[..., tuple[float, float]]
    higher_is_similar: bool = True
    #: ``(moments, **options) -> value`` for the streaming form; None: needs every sample at once.
    from_moments: Callable[..., float] | None = None
    #: Options under which the moment form does not apply (e.g. a monomial shape group).
    streams: Callable[..., bool] = field(default=lambda **_: True)


def _const(value: Any) -> Callable[..., Any]:
    return lambda **_: value


def _shape_streams(group: Any = "orthogonal", **_: Any) -> bool:
    return _shape.moment_form(group)


ENTRIES: dict[str, Entry] = {
    "cca": Entry(_cca.cca, _const("general_linear"), _const(_cca.VALUE_RANGE), True,
                 _cca.cca_from_moments),
    "svcca": Entry(
        _cca.svcca,
        lambda variance=0.99, dims=None, **_: _cca.svcca_invariance(variance, dims),
        _const(_cca.VALUE_RANGE), True, _cca.svcca_from_moments,
    ),
    "pwcca": Entry(_cca.pwcca, _const("signed_permutation"), _const(_cca.VALUE_RANGE), True,
                   _cca.pwcca_from_moments),
    "linear_regression": Entry(
        _regression.linear_regression,
        lambda average="variance_weighted", **_: _regression.regression_invariance(average),
        _const(_regression.VALUE_RANGE), True, _regression.regression_from_moments,
    ),
    "linear_predictivity": Entry(
        _predictivity.linear_predictivity, _const("signed_permutation"),
        _const(_predictivity.VALUE_RANGE),
    ),
    "rsa": Entry(_rsa.rsa, lambda rdm="correlation", **_: _rsa.rsa_invariance(rdm),
                 _const(_rsa.VALUE_RANGE)),
    "mutual_knn": Entry(_knn.mutual_knn, _const("orthogonal"), _const((0.0, 1.0))),
    "knn_jaccard": Entry(_knn.knn_jaccard, _const("orthogonal"), _const((0.0, 1.0))),
    "cknna": Entry(_knn.cknna, _const("orthogonal"), _const(_knn.cknna.value_range)),
    "shape_distance": Entry(
        _shape.shape_distance,
        lambda alpha=1.0, group="orthogonal", **_: _shape.shape_invariance(alpha, group),
        lambda score="angular", group="orthogonal", **_: _shape.shape_range(score, group),
        False,
        _shape.shape_from_moments,
        _shape_streams,
    ),
    "soft_matching_distance": Entry(
        _shape.soft_matching_distance, _const("permutation"), _const(_shape.SOFT_RANGE), False,
        _shape.soft_matching_from_moments,
    ),
    "stochastic_shape_distance": Entry(
        _stochastic.stochastic_shape_distance, _const("orthogonal"),
        _const(_stochastic.VALUE_RANGE), False,
    ),
}  # fmt: skip
#: Names that are another entry with an option set.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"cca_yanai": ("cca", {"statistic": "yanai"})}
NAMES = (*ENTRIES, *ALIASES)


class MomentStream(Accumulator):
    """Streaming form of a measure computed from the second moments; equals the function up to
    round-off for any batching. ``update(X_batch, Y_batch)``, ``compute()``, ``reset()``."""

    def __init__(
        self, name: str, entry: Entry, options: Mapping[str, Any], invariant_to: tuple[str, ...]
    ) -> None:
        self.name, self.entry = name, entry
        self.reading = {k: v for k, v in options.items() if k in _READING}
        self.options = {k: v for k, v in options.items() if k not in _READING and k != "group"}
        self.invariant_to = invariant_to
        self.value_range = entry.value_range(**options)
        self.higher_is_similar = entry.higher_is_similar
        super().__init__()

    def _new_state(self) -> MomentAccumulator:
        return MomentAccumulator(**self.reading)

    def update(self, X: Any, Y: Any) -> None:
        self._state.update(X, Y)

    def compute(self) -> float:
        assert self.entry.from_moments is not None
        return self.entry.from_moments(self._state.moments(), **self.options)


@dataclass(frozen=True)
class Described:
    label: str
    fn: Callable[..., float]
    options: dict[str, Any]
    invariant_to: tuple[str, ...]
    higher_is_similar: bool
    value_range: tuple[float, float]
    accumulator: Callable[[], Accumulator] | None


def _check_options(name: str, fn: Callable[..., float], options: Mapping[str, Any]) -> None:
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("X", "Y")]
    bad = sorted(set(options) - set(allowed))
    if bad:
        what = "a group (name:group)" if bad == ["group"] else f"options {bad}"
        raise InvalidOptionError(f"{name} takes no {what}; its options are {allowed}")


def describe(name: str, options: Mapping[str, Any]) -> Described:
    """What ``registry.metric`` needs for measure ``name`` with ``options``."""
    if name in ALIASES:
        name, extra = ALIASES[name]
        options = {**extra, **options}
    entry = ENTRIES[name]
    opts = dict(options)
    _check_options(name, entry.fn, opts)
    inv = invariances(entry.invariance(**opts))
    label = name + ("[" + ",".join(f"{k}={opts[k]}" for k in sorted(opts)) + "]" if opts else "")
    acc = None
    if entry.from_moments is not None and entry.streams(**opts):
        acc = lambda: MomentStream(label, entry, opts, inv)  # noqa: E731
    return Described(
        label, entry.fn, opts, inv, entry.higher_is_similar, entry.value_range(**opts), acc
    )


class CatalogMeasure(Measure):
    """A catalog entry as a registered metric; ``pairwise`` hands it the validated features."""

    def __init__(self, name: str) -> None:
        self.names = (name, *(a for a, (target, _) in ALIASES.items() if target == name))

    def bind(self, name: str, options: dict[str, Any]) -> Metric:
        d = describe(name, options)
        return Metric(
            d.label, d.fn, d.options, d.invariant_to, d.higher_is_similar, d.accumulator,
            d.value_range, measure=self,
        )  # fmt: skip


for _name in ENTRIES:
    register(CatalogMeasure(_name))
