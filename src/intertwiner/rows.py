"""Typed result rows: the schema that ``experiments`` writes and ``report`` reads.

A stored row (``store.Row``) holds two JSON objects: the job's ``config`` (hashed into the row's
key) and its result (``metrics``). Each stage kind declares both halves here as frozen dataclasses,
``<Kind>Job`` and ``<Kind>Result``; :data:`SCHEMAS` maps the stored kind to the pair. The keys on
disk are the field names, unchanged from the rows written before this module existed.

- A field is required when a reader (the report) relies on it; the other keys a stage writes are
  declared too, as optional fields, and checked whenever present. ``X.from_json(d)`` raises
  :class:`RowSchemaError` naming the row half and the field (missing, or of another type); keys
  it does not declare (e.g. the scalars of a library result) are kept in ``extra``.
- ``x.to_json()`` is the plain dict again: ``X.from_json(d).to_json() == d`` for every stored row,
  so a job config built through its ``Job`` class hashes to the same key as the dict it replaced.
  A field declared with :func:`optional` is left out of the JSON while it is None (older rows
  lack it; a writer that has no value leaves no key).
- :func:`read` turns store rows into :class:`TypedRow` objects whose ``.job`` and ``.result``
  are checked when first used (a reader that never looks at the config does not need it).

Values are JSON-plain (str, int, float, bool, None, lists, dicts): a non-finite float is stored as
null, hence ``float | None`` for measured quantities that can be NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from intertwiner.errors import IntertwinerError

__all__ = [
    "SCHEMAS",
    "MergeJob",
    "MergeResult",
    "is_merge",
    "schemas_of",
    "AbsorbJob",
    "AbsorbResult",
    "AlignmentJob",
    "AlignmentResult",
    "DissectionJob",
    "DissectionResult",
    "GroundingJob",
    "GroundingResult",
    "GroundingZooJob",
    "GroundingZooResult",
    "GroupTableJob",
    "GroupTableResult",
    "MetricsJob",
    "MetricsResult",
    "Record",
    "RowSchemaError",
    "SanityJob",
    "SanityResult",
    "StitchingJob",
    "StitchingResult",
    "TypedRow",
    "ZooJob",
    "ZooResult",
    "check_type",
    "optional",
    "StoredRow",
    "nullable",
    "read",
]


class RowSchemaError(IntertwinerError, ValueError):
    """A result row (or a preset) whose JSON does not fit its schema; the message names the field."""


def optional(default: Any = None) -> Any:
    """A keyword-only field that may be absent from the JSON: read as ``default`` when absent,
    and left out of ``to_json`` while its value is None."""
    return field(default=default, kw_only=True, metadata={"omit_none": True})


def nullable() -> Any:
    """A field that may be None and is then stored as null (it is part of the job key)."""
    return field(default=None, kw_only=True)


# -- the checking machinery ---------------------------------------------------------------------
Checker = Callable[[Any, str], None]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _layout(cls: type) -> tuple[tuple[str, Checker, bool, bool], ...]:
    """(name, check, required, omitted when None) of each declared field of a Record."""
    hints = _hints(cls)
    return tuple(
        (
            f.name,
            _checker(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            bool(f.metadata.get("omit_none")),
        )
        for f in dataclasses.fields(cls)
        if f.name != "extra"
    )


@functools.cache
def _names(cls: type) -> frozenset[str]:
    return frozenset(name for name, *_ in _layout(cls))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_type(value: Any, tp: Any, where: str) -> None:
    """Raise RowSchemaError naming ``where`` when the JSON value ``value`` is not of type ``tp``
    (str, int, float (ints accepted), bool, None, ``list[X]``, ``dict[str, X]``, unions (the
    first arm whose outer type fits decides), ``Literal``, ``Any``)."""
    _checker(tp)(value, where)


@functools.cache
def _checker(tp: Any) -> Checker:
    """The check of annotation ``tp``, built once per annotation (rows are read by thousands)."""
    if tp is Any:
        return lambda value, where: None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [(_outer(a), _checker(a)) for a in args]

        def union(value: Any, where: str) -> None:
            for fits, check in arms:
                if fits(value):
                    return check(value, where)
            _mismatch(value, tp, where)

        return union
    fits = _outer(tp)
    if origin in (list, tuple) and args and args[0] is not Any:
        item = _checker(args[0])

        def sequence(value: Any, where: str) -> None:
            if not fits(value):
                _mismatch(value, tp, where)
            for i, v in enumerate(value):
                item(v, f"{where}[{i}]")

        return sequence
    if origin is dict and len(args) == 2 and args[1] is not Any:
        entry = _checker(args[1])

        def mapping(value: Any, where: str) -> None:
            if not fits(value):
                _mismatch(value, tp, where)
            for k, v in value.items():
                entry(v, f"{where}.{k}")

        return mapping

    def plain(value: Any, where: str) -> None:
        if not fits(value):
            _mismatch(value, tp, where)

    return plain


def _mismatch(value: Any, tp: Any, where: str) -> typing.NoReturn:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    raise RowSchemaError(f"{where}: expected {name}, got {_describe(value)}")


def _outer(tp: Any) -> Callable[[Any], bool]:
    """Whether a value has the outer type ``tp`` (containers' items are checked apart)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda v: True
    if tp is None or tp is type(None):
        return lambda v: v is None
    if origin in (typing.Union, types.UnionType):
        arms = [_outer(a) for a in typing.get_args(tp)]
        return lambda v: any(f(v) for f in arms)
    if origin is Literal:
        allowed = typing.get_args(tp)
        return lambda v: v in allowed
    if origin in (list, tuple) or tp in (list, tuple):
        return lambda v: isinstance(v, list | tuple)
    if origin is dict or tp is dict:
        return lambda v: isinstance(v, dict)
    # numpy scalars count (the store writes them as JSON numbers); a bool is no number here
    if tp is bool:
        return _is_bool
    if tp is int:
        return lambda v: isinstance(v, numbers.Integral) and not _is_bool(v)
    if tp is float:
        return lambda v: isinstance(v, numbers.Real) and not _is_bool(v)
    if tp is str:
        return lambda v: isinstance(v, str)
    if isinstance(tp, type):
        return lambda v: isinstance(v, tp)
    return lambda v: True  # pragma: no cover (an annotation this checker does not know)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_


# -- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """A JSON object with declared, checked fields; undeclared keys are kept in ``extra``."""

    #: What the error messages call this record ("stitching job", "zoo result", ...).
    LABEL: ClassVar[str] = "record"

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    def __post_init__(self) -> None:
        for name, check, _, _ in _layout(type(self)):
            check(getattr(self, name), f"{self.LABEL} field {name}")
        clash = self.extra.keys() & self._names() if self.extra else ()
        if clash:
            raise RowSchemaError(f"{self.LABEL}: extra keys {sorted(clash)} are declared fields")

    @classmethod
    def _names(cls) -> frozenset[str]:
        return _names(cls)

    def to_json(self) -> dict[str, Any]:
        """The plain JSON object (declared fields, then ``extra``); nested values as given."""
        out: dict[str, Any] = {}
        for name, _, _, omit_none in _layout(type(self)):
            value = getattr(self, name)
            if value is not None or not omit_none:
                out[name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str | None = None) -> typing.Self:
        """Check and wrap a JSON object; RowSchemaError names ``where`` and the bad field."""
        where = where or cls.LABEL
        if not isinstance(data, Mapping):
            raise RowSchemaError(f"{where}: expected a JSON object, got {_describe(data)}")
        layout = _layout(cls)
        for name, _, required, _ in layout:
            if required and name not in data:
                raise RowSchemaError(
                    f"{where}: field {name!r} is missing (it has {sorted(data)}); the row was "
                    "not written by this stage kind, or by a version that did not record it"
                )
        names = _names(cls)
        try:
            return cls(
                **{k: v for k, v in data.items() if k in names},
                extra={k: v for k, v in data.items() if k not in names},
            )
        except RowSchemaError as e:
            raise RowSchemaError(str(e).replace(cls.LABEL, where, 1)) from None


J = TypeVar("J", bound=Record)
R = TypeVar("R", bound=Record)


# -- the stage kinds ----------------------------------------------------------------------------
# Required fields: what the report reads. optional(): written by the stage, absent from old or
# hand-made rows. nullable(): written even when None (the job key depends on it).
@dataclass(frozen=True)
class GroupTableJob(Record):
    LABEL: ClassVar[str] = "group_table job"
    activation: str
    stage: str | None = optional()
    trials: int | None = optional()


@dataclass(frozen=True)
class GroupTableResult(Record):
    """One row of Table 1 (``groups._table.group_row``)."""

    LABEL: ClassVar[str] = "group_table result"
    activation: str
    group: str | None = optional()
    family: str | None = optional()
    description: str | None = optional()
    phi: str | None = optional()
    verify_error_float64: float | None = optional()
    verify_error_float32: float | None = optional()
    larger_family_error: float | None = nullable()
    discovered_family: str | None = optional()
    discovered_phi: str | None = optional()
    discover_agrees: bool | None = optional()


@dataclass(frozen=True)
class ZooJob(Record):
    LABEL: ClassVar[str] = "zoo job"
    arch: str
    activation: str
    seed: int
    train: dict[str, Any]
    stage: str | None = optional()
    role: str | None = optional()  # runs made before roles were recorded: "zoo"
    model: dict[str, Any] | None = optional()
    data: dict[str, Any] | None = optional()


@dataclass(frozen=True)
class ZooResult(Record):
    LABEL: ClassVar[str] = "zoo result"
    test_accuracy: float
    val_accuracy: float
    train_seconds: float
    test_loss: float | None = optional()
    parameters: int | None = optional()
    best_epoch: int | None = nullable()
    checkpoint: str | None = optional()


@dataclass(frozen=True)
class _PairJob(Record):
    """A job on one pair of zoo models of one architecture."""

    arch: str
    pair: int
    stage: str | None = optional()
    model_a: dict[str, Any] | None = optional()
    model_b: dict[str, Any] | None = optional()
    data: dict[str, Any] | None = optional()


@dataclass(frozen=True)
class MetricsJob(_PairJob):
    LABEL: ClassVar[str] = "metrics job"
    metrics: list[str]
    n_samples: int | None = nullable()  # None: the whole test split
    diagonal_only: dict[str, bool] | None = optional()


@dataclass(frozen=True)
class MetricsResult(Record):
    """``sites`` and one layer x layer matrix per metric name (kept in ``extra``: the names are
    the job's ``metrics``); read a matrix with :meth:`matrix`."""

    LABEL: ClassVar[str] = "metrics result"
    sites: list[str]
    n_samples: int | None = optional()

    def matrix(self, name: str) -> list[list[float | None]] | None:
        """The layer x layer matrix of metric ``name`` (None entries: not computed or NaN), or
        None when this row has none."""
        if name not in self.extra:
            return None
        mat = self.extra[name]
        check_type(mat, list[list[float | None]], f"{self.LABEL} field {name}")
        return mat


@dataclass(frozen=True)
class StitchingJob(_PairJob):
    LABEL: ClassVar[str] = "stitching job"
    site_index: int
    layer_label: str
    layer: str | list[Any] | None = optional()
    epochs: int | None = optional()
    seed: int | None = optional()
    stitch_config: dict[str, Any] | None = optional()


@dataclass(frozen=True)
class StitchingResult(Record):
    """``penalty`` (fraction) and the site; the other scalars of ``StitchResult`` in ``extra``."""

    LABEL: ClassVar[str] = "stitching result"
    penalty: float
    site: str | None = optional()  # rows stored before the name was recorded
    in_residual_branch: bool | None = optional()


@dataclass(frozen=True)
class _SiteJob(Record):
    """A fixed map (``group``: a row label of ``sanity_job.GROUPS``) before one site of a
    sanity-test model, one repeat."""

    activation: str
    layer: int
    group: str
    repeat: int
    stage: str | None = optional()
    model: dict[str, Any] | None = optional()


@dataclass(frozen=True)
class SanityJob(_SiteJob):
    LABEL: ClassVar[str] = "sanity job"
    epochs: int | None = optional()
    lr: float | None = optional()
    batch_size: int | None = optional()
    schedule: str | None = optional()


@dataclass(frozen=True)
class SanityResult(Record):
    """``penalty`` = base - retrained test accuracy (fractions); the rest of
    ``experiments.sanity``'s row in ``extra``."""

    LABEL: ClassVar[str] = "sanity result"
    penalty: float


@dataclass(frozen=True)
class AbsorbJob(_SiteJob):
    LABEL: ClassVar[str] = "absorb job"
    max_rows: int | None = optional()


@dataclass(frozen=True)
class AbsorbResult(Record):
    """``drop`` = base - refit test accuracy (fractions), ``residual`` the relative least-squares
    residual of the refit ``layer``; the rest of ``experiments.absorb``'s row in ``extra``."""

    LABEL: ClassVar[str] = "absorb result"
    drop: float
    layer: str | None = optional()
    base_accuracy: float | None = optional()
    initial_accuracy: float | None = optional()
    refit_accuracy: float | None = optional()
    residual: float | None = optional()


@dataclass(frozen=True)
class DissectionJob(Record):
    LABEL: ClassVar[str] = "dissection job"
    stage: str | None = optional()
    model: dict[str, Any] | None = optional()
    layer: int | None = optional()
    rotations: list[float] | None = optional()
    n_orthogonal: int | None = optional()
    seed: int | None = optional()


@dataclass(frozen=True)
class DissectionResult(Record):
    LABEL: ClassVar[str] = "dissection result"
    layer: str
    group: str
    powers: list[float]
    power_counts: list[Any]
    counts: dict[str, int]
    n_units: int
    rows: list[dict[str, Any]] | None = optional()


@dataclass(frozen=True)
class AlignmentJob(_PairJob):
    LABEL: ClassVar[str] = "alignment job"
    alignment: str
    method: str | None = nullable()  # None: B is not aligned
    group: str | None = optional()
    alphas: int | None = optional()
    eval_samples: int | None = optional()
    bn_samples: int | None = optional()


@dataclass(frozen=True)
class AlignmentResult(Record):
    """Barriers and curves per interpolation: ``bn_reset`` (BN statistics re-estimated),
    ``no_reset`` and ``repair`` (rows of runs made before REPAIR was measured lack it)."""

    LABEL: ClassVar[str] = "alignment result"
    align_seconds: float
    distance_after: float
    distance_before: float | None = optional()
    sweeps: int | None = optional()
    has_bn: bool | None = optional()
    barrier_bn_reset: float | None = optional()
    barrier_no_reset: float | None = optional()
    barrier_repair: float | None = optional()
    mid_accuracy_bn_reset: float | None = optional()
    mid_accuracy_no_reset: float | None = optional()
    mid_accuracy_repair: float | None = optional()
    alphas_bn_reset: list[float] | None = optional()
    alphas_no_reset: list[float] | None = optional()
    alphas_repair: list[float] | None = optional()
    losses_bn_reset: list[float | None] | None = optional()
    losses_no_reset: list[float | None] | None = optional()
    losses_repair: list[float | None] | None = optional()
    accuracies_bn_reset: list[float] | None = optional()
    accuracies_no_reset: list[float] | None = optional()
    accuracies_repair: list[float] | None = optional()


@dataclass(frozen=True)
class GroundingZooJob(Record):
    LABEL: ClassVar[str] = "grounding_zoo job"
    grounding: dict[str, Any]
    seed: int
    random_labels: bool | int
    stage: str | None = optional()


@dataclass(frozen=True)
class GroundingZooResult(Record):
    LABEL: ClassVar[str] = "grounding_zoo result"
    test_accuracy: float


@dataclass(frozen=True)
class GroundingJob(Record):
    LABEL: ClassVar[str] = "grounding job"
    grounding: dict[str, Any]
    measure: str
    stage: str | None = optional()


@dataclass(frozen=True)
class GroundingResult(Record):
    """One measure's ``MeasureScore.to_dict()`` and the zoo's accuracies."""

    LABEL: ClassVar[str] = "grounding result"
    score: dict[str, Any]
    test_accuracy: list[float]
    random_label_accuracy: list[float] | None = nullable()


@dataclass(frozen=True)
class MergeJob(Record):
    """A many-model merge of the alignment stage: ``models`` (K zoo models) aligned to
    ``reference`` ("mean": MergeMany, "first") and averaged. Stored as an ``alignment`` row."""

    LABEL: ClassVar[str] = "merge job"
    arch: str
    models: list[dict[str, Any]]
    alignment: str
    reference: str
    stage: str | None = optional()
    data: dict[str, Any] | None = optional()
    max_iter: int | None = optional()
    eval_samples: int | None = optional()
    bn_samples: int | None = optional()


@dataclass(frozen=True)
class MergeResult(Record):
    """Test accuracies of the inputs, their ensemble and the merge (BN re-estimated; REPAIRed)."""

    LABEL: ClassVar[str] = "merge result"
    input_accuracies: list[float]
    ensemble_accuracy: float
    merged_accuracy: float
    repair_accuracy: float
    align_seconds: float
    rounds: int
    merged_loss: float | None = nullable()


#: Stored row kind -> (job schema, result schema).
SCHEMAS: dict[str, tuple[type[Record], type[Record]]] = {
    "group_table": (GroupTableJob, GroupTableResult),
    "zoo": (ZooJob, ZooResult),
    "metrics": (MetricsJob, MetricsResult),
    "stitching": (StitchingJob, StitchingResult),
    "sanity": (SanityJob, SanityResult),
    "absorb": (AbsorbJob, AbsorbResult),
    "dissection": (DissectionJob, DissectionResult),
    "alignment": (AlignmentJob, AlignmentResult),
    "grounding_zoo": (GroundingZooJob, GroundingZooResult),
    "grounding": (GroundingJob, GroundingResult),
}


def is_merge(config: Mapping[str, Any]) -> bool:
    """An ``alignment`` row's config that lists ``models`` is a many-model merge (``MergeJob``)."""
    return "models" in config


def schemas_of(kind: str, config: Mapping[str, Any]) -> tuple[type[Record], type[Record]]:
    """The (job, result) schema of a stored row: its kind's, or the merge pair for the alignment
    stage's many-model merge rows (one stage writes both, so they share the kind)."""
    if kind == "alignment" and is_merge(config):
        return MergeJob, MergeResult
    return SCHEMAS[kind]


class StoredRow(typing.Protocol):
    """What :func:`read` needs of a row (``store.Row`` has it)."""

    kind: str
    key: str
    config: dict
    metrics: dict


@dataclass(frozen=True)
class TypedRow(Generic[J, R]):
    """A stored row read through its kind's schema; ``job`` (the config) and ``result`` (the
    metrics) are checked on first use. ``row`` is the store's row (``seconds``, ``version``)."""

    row: StoredRow

    @property
    def kind(self) -> str:
        return self.row.kind

    @property
    def key(self) -> str:
        return self.row.key

    @functools.cached_property
    def job(self) -> J:
        job_cls = schemas_of(self.kind, self.row.config)[0]
        return job_cls.from_json(self.row.config, where=f"{self._where} config")  # type: ignore[return-value]

    @functools.cached_property
    def result(self) -> R:
        result_cls = schemas_of(self.kind, self.row.config)[1]
        return result_cls.from_json(self.row.metrics, where=f"{self._where} result")  # type: ignore[return-value]

    @property
    def _where(self) -> str:
        return f"{self.kind} row {self.key[:12]}"


def read(rows: Iterable[StoredRow], kind: str | None = None) -> list[TypedRow]:
    """Store rows (``store.Row``) as :class:`TypedRow` objects; with ``kind``, a row of another
    kind is refused, as is a row of a kind that has no schema (RowSchemaError naming the row)."""
    out = []
    for r in rows:
        if r.kind not in SCHEMAS:
            raise RowSchemaError(
                f"row {r.key[:12]} has kind {r.kind!r}, which has no schema; known kinds: "
                f"{', '.join(SCHEMAS)}"
            )
        if kind is not None and r.kind != kind:
            raise RowSchemaError(f"row {r.key[:12]} is a {r.kind!r} row, expected {kind!r}")
        out.append(TypedRow(r))
    return out
