"""A metric as one object, and the one registry of them.

A ``Measure`` is what a metric module registers (one ``register(...)`` call): the names it answers
to, how to bind options into a ``Metric`` (its label, range, direction, invariance and streaming
class), and what ``pairwise`` does with it (``prepare`` one model's features once, then ``pair``
two prepared models). The defaults suit any metric computed from the features as they are, so a
new metric needs only ``bind``. ``Metric`` is a measure with its options bound; ``pairwise`` and
``compare`` read its attributes and never compare functions by identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidInputError, InvalidOptionError
from intertwiner.metrics._prep import validate

if TYPE_CHECKING:
    from intertwiner.metrics.streaming import Accumulator


@dataclass
class Prepared:
    """One model's one layer, ready for pairs: validated features and what depends on them only
    (a kernel, a covariance, a constant-features flag), computed once by ``Measure.prepare``."""

    x: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class Measure:
    """One registered metric family. Subclasses set ``names`` and define ``bind``; override
    ``prepare``/``pair`` when per-model work can be shared across the pairs of ``pairwise``."""

    #: The names ``metric(name)`` accepts for this measure (aliases included).
    names: tuple[str, ...] = ()

    def bind(self, name: str, options: dict[str, Any]) -> Metric:
        """The ``Metric`` for ``name`` (one of ``names``) with ``options``."""
        raise NotImplementedError

    def prepare(self, m: Metric, x: FeatureLike, layer: str) -> Prepared:
        """One model's features at ``layer``, checked once (default: validated, nothing more)."""
        return Prepared(validate(x, layer, m.options.get("layout"), finite=False))

    def pair(self, m: Metric, a: Prepared, b: Prepared) -> float:
        """The value for two prepared models (default: the metric on the features)."""
        return m(a.x, b.x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.names}"


#: The measure of a ``Metric`` built by hand (no registered measure): the plain defaults.
PLAIN = Measure()


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
    #: The registered measure it came from: what ``pairwise`` prepares and pairs.
    measure: Measure = field(default=PLAIN, repr=False)
    #: The value is linear CKA of the flattened features, which ``compare`` reads for every layer
    #: pair from one shared feature/Gram bank instead of per-pair accumulators.
    linear_cka: bool = False

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


#: name -> measure, filled by one ``register`` call per metric module.
REGISTRY: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    """Make ``measure`` known to ``metric(name)``, ``pairwise``, ``compare`` and the CLI under
    each of its ``names``; returns it. A name already taken is an error (unregister it first)."""
    if not isinstance(measure, Measure) or not measure.names:
        raise InvalidInputError(f"register takes a Measure with names, got {measure!r}")
    taken = [n for n in measure.names if n in REGISTRY and REGISTRY[n] is not measure]
    if taken:
        raise InvalidOptionError(f"metric names {taken} are registered already; unregister first")
    for n in measure.names:
        REGISTRY[n] = measure
    return measure


def unregister(measure: Measure) -> None:
    """Forget ``measure`` under every name it was registered with."""
    for n in [n for n, m in REGISTRY.items() if m is measure]:
        del REGISTRY[n]
