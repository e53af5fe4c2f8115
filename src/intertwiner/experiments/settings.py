"""Typed presets: a preset is a frozen :class:`Preset` tree of stage settings.

Each setting's default is declared once, on its field (``setting(default)``); a stage or job that
needs the value reads it from here. A :class:`Spec` remembers which settings were given: its JSON
(``to_json``: what a run folder records as the preset's configuration and compares on every
``reproduce``) holds those alone, so that adding a default here never changes the identity of a
run made before. ``Spec.from_json`` parses that JSON back (``from_json(s.to_json()) == s``) and
:func:`override` applies ``"stage.key=value"`` assignments; every error names the bad key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from intertwiner.errors import InvalidOptionError
from intertwiner.experiments.absorb import AbsorbConfig
from intertwiner.experiments.sanity import SanityConfig
from intertwiner.rows import RowSchemaError, check_type

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


class PresetError(InvalidOptionError):
    """A preset (or an override of one) whose key or value does not fit the preset's schema."""


def setting(default: Any) -> Any:
    """A setting with a default (declared here, once); left out of the JSON unless given."""
    return field(default=_UNSET, metadata={"default": default})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _spec_class(tp: Any) -> type[Spec] | None:
    """The Spec class an annotation holds (``X``, ``X | None``), else None."""
    if isinstance(tp, type) and issubclass(tp, Spec):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, Spec)]
        return found[0] if found else None
    return None


def _parse(value: Any, tp: Any, where: str) -> Any:
    """A JSON value as the annotation ``tp`` wants it: nested Specs (also in lists) built."""
    cls = _spec_class(tp)
    if cls is not None and isinstance(value, Mapping):
        return cls.from_json(value, where=where)
    if isinstance(value, Spec):
        return value
    if cls is not None and value is not None:
        raise PresetError(f"{where}: expected a table of settings, got {json.dumps(value)}")
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and isinstance(value, list | tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        if _spec_class(arg) is not None:
            return [_parse(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, Mapping):
        _, arg = typing.get_args(tp)
        if _spec_class(arg) is not None:
            return {k: _parse(v, arg, f"{where}.{k}") for k, v in value.items()}
    try:
        check_type(value, tp, where)
    except RowSchemaError as e:
        raise PresetError(str(e)) from None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Spec:
    """A frozen tree of settings that remembers which were given (see the module docstring)."""

    LABEL: ClassVar[str] = "settings"

    _given: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        given = set()
        for f in self._fields():
            value = getattr(self, f.name)
            if value is _UNSET:
                value = copy.deepcopy(f.metadata["default"])
            else:
                given.add(f.name)
                value = _parse(value, hints[f.name], f"{self.LABEL}.{f.name}")
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "_given", frozenset(given))

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "_given"]

    def given(self, name: str) -> bool:
        """Whether setting ``name`` was given (else it holds its declared default)."""
        return name in self._given

    def to_json(self) -> dict[str, Any]:
        """The given settings as plain JSON (nested settings included), in declaration order."""
        return {
            f.name: _plain(getattr(self, f.name)) for f in self._fields() if f.name in self._given
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "") -> typing.Self:
        """Parse ``data`` (found at dotted key ``where``); PresetError names the unknown,
        missing or mistyped key by its dotted path."""
        if not isinstance(data, Mapping):
            raise PresetError(f"{where or cls.LABEL}: expected a table of settings, got "
                              f"{type(data).__name__}")  # fmt: skip
        fields = {f.name: f for f in cls._fields()}
        path = (lambda k: f"{where}.{k}") if where else (lambda k: k)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise PresetError(
                f"unknown key {path(unknown[0])}; the keys of {where or cls.LABEL} are "
                f"{', '.join(fields)}"
            )
        for name, f in fields.items():
            if f.default is dataclasses.MISSING and name not in data:
                raise PresetError(f"key {path(name)} is missing")
        hints = _hints(cls)
        return cls(**{k: _parse(v, hints[k], path(k)) for k, v in data.items()})


# -- the settings of each stage -----------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings(Spec):
    """Training of a zoo model (``training.TrainConfig`` keywords; None: TrainConfig's default)."""

    LABEL: ClassVar[str] = "train"
    epochs: int | None = setting(None)
    batch_size: int | None = setting(None)
    lr: float | None = setting(None)
    weight_decay: float | None = setting(None)
    optimizer: str | None = setting(None)
    schedule: str | None = setting(None)

    def updated(self, other: TrainSettings | None) -> TrainSettings:
        """These settings with the given ones of ``other`` on top."""
        return self if other is None else TrainSettings.from_json(
            {**self.to_json(), **other.to_json()}
        )  # fmt: skip


@dataclass(frozen=True)
class MetricsSettings(Spec):
    LABEL: ClassVar[str] = "metrics"
    n_samples: int | None  # test images per pair; None: the whole test split


@dataclass(frozen=True)
class StitchSettings(Spec):
    LABEL: ClassVar[str] = "stitch"
    kinds: list[str | list[Any]]  # stitch layer kinds: "full", ["low_rank", 2], "perm_scale"...
    epochs: int
    sites: int  # per architecture, spread over depth
    stitch_config: dict[str, Any] = setting({})  # extra StitchConfig fields for every job


@dataclass(frozen=True)
class AbsorbSettings(Spec):
    """The closed-form refit stage (``sanity_job.absorb_stage``)."""

    LABEL: ClassVar[str] = "sanity.absorb"
    repeats: int
    kinds: list[str] = setting(["identity", "G_ReLU", "orthogonal"])
    max_rows: int = setting(AbsorbConfig.max_rows)  # least-squares rows


@dataclass(frozen=True)
class SanitySettings(Spec):
    """The retraining sanity test (``sanity_job.stage``) and, with ``absorb``, the refit."""

    LABEL: ClassVar[str] = "sanity"
    activations: list[str]
    arch: str
    model: dict[str, Any]
    repeats: int
    epochs: int
    data: dict[str, Any] | None = setting(None)  # None: the preset's data
    train: TrainSettings | None = setting(None)  # None: the preset's training
    layers: int = setting(3)  # the first sites of the model
    kinds: list[str] = setting(["G_ReLU", "orthogonal"])
    lr: float = setting(SanityConfig.lr)
    batch_size: int | None = setting(None)  # None: SanityConfig's
    # Recorded in the full preset but never passed to the jobs (SanityConfig's "step" runs):
    # kept as it is so that the identity of existing runs does not change.
    schedule: str | None = setting(None)
    absorb: AbsorbSettings | None = setting(None)


@dataclass(frozen=True)
class DissectionSettings(Spec):
    LABEL: ClassVar[str] = "dissection"
    arch: str
    model: dict[str, Any]
    seeds: int
    data: dict[str, Any]
    train: TrainSettings
    layers: list[int]  # site indices
    rotations: list[float]  # powers t of one random rotation R^t


@dataclass(frozen=True)
class AlignmentSettings(Spec):
    LABEL: ClassVar[str] = "alignment"
    alphas: int
    eval_samples: int
    bn_samples: int


@dataclass(frozen=True)
class GroundingSettings(Spec):
    """One grounding zoo (``GroundingConfig.for_zoo`` keywords; None: the zoo's default)."""

    LABEL: ClassVar[str] = "grounding"
    zoo: str
    seeds: int | None = setting(None)
    depth: int | None = setting(None)
    width: int | None = setting(None)
    epochs: int | None = setting(None)
    n_inputs: int | None = setting(None)
    random_labels: int | None = setting(None)
    measures: list[str] | None = setting(None)


@dataclass(frozen=True)
class Preset(Spec):
    """The sizes of every stage of one ``reproduce`` preset (None turns a stage off)."""

    LABEL: ClassVar[str] = "preset"
    data: str
    archs: dict[str, dict[str, Any]]  # architecture -> model options
    seeds: int
    train: TrainSettings
    group_trials: int
    activations: list[str]
    pairs: int
    metrics: MetricsSettings
    stitch: StitchSettings
    sanity: SanitySettings | None
    dissection: DissectionSettings | None
    data_options: dict[str, Any] = setting({})  # for the preset's own dataset only
    train_overrides: dict[str, TrainSettings] = setting({})  # arch -> train settings on top
    alignment: AlignmentSettings | None = setting(None)
    grounding: list[GroundingSettings] = setting([])

    def train_for(self, arch: str) -> TrainSettings:
        """The training of architecture ``arch``: ``train`` with its overrides on top."""
        return self.train.updated(self.train_overrides.get(arch))


def _assign(tree: dict, path: list[str], value: Any, where: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        sub = node.get(part) if isinstance(node, dict) else None
        if not isinstance(sub, dict):
            done = ".".join(path[: i + 1])
            raise PresetError(
                f"cannot set {where}: {done} is {json.dumps(sub)} in this preset, not a table "
                "of settings"
            )
        node = sub
    node[path[-1]] = value


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``2``, ``1e-3``, ``null``, ``[1, 2]``), else
    the string itself (``cosine``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def override(preset: Preset, assignments: Mapping[str, Any] | list[str]) -> Preset:
    """``preset`` with dotted settings replaced: ``{"stitch.epochs": 2}`` or ``["stitch.epochs=2"]``
    (values parsed by :func:`parse_value`). PresetError names a key that is not a setting."""
    if not isinstance(assignments, Mapping):
        pairs = {}
        for item in assignments:
            key, eq, text = str(item).partition("=")
            if not eq or not key:
                raise PresetError(f"expected KEY=VALUE (e.g. stitch.epochs=2), got {item!r}")
            pairs[key.strip()] = parse_value(text.strip())
        assignments = pairs
    tree = preset.to_json()
    for key, value in assignments.items():
        _assign(tree, key.split("."), value, key)
    return Preset.from_json(tree)
