"""The result-row schema (``intertwiner.rows``): stored rows load, round-trip exactly, and a row
that does not fit names its kind and field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from intertwiner import rows as R
from intertwiner.store import Row, Store

# One row of every kind, as intertwiner 0.1.0 wrote them before this schema existed: the "quick"
# preset shrunk (presets.shrink, myrtle_cnn only, data "digits"), run by `reproduce` on main.
STORED = json.loads((Path(__file__).parent / "_support" / "stored_rows.json").read_text())


def _row(d: dict) -> Row:
    return Row(d["key"], d["kind"], d["config"], d["metrics"], None, None, d["version"], 0.0)


@pytest.fixture(params=STORED, ids=[d["kind"] for d in STORED])
def stored(request) -> dict:
    return request.param


def test_every_kind_has_a_schema_and_a_stored_row():
    assert {d["kind"] for d in STORED} == set(R.SCHEMAS)


def test_stored_rows_load_and_round_trip_exactly(stored):
    (typed,) = R.read([_row(stored)], stored["kind"])
    job_cls, result_cls = R.SCHEMAS[stored["kind"]]
    assert isinstance(typed.job, job_cls) and isinstance(typed.result, result_cls)
    assert typed.job.to_json() == stored["config"]
    assert typed.result.to_json() == stored["metrics"]
    assert job_cls.from_json(typed.job.to_json()) == typed.job
    assert result_cls.from_json(typed.result.to_json()) == typed.result


def test_stored_rows_load_from_a_store(tmp_path):
    store = Store(tmp_path)
    for d in STORED:
        store.put(d["kind"], d["config"], d["metrics"])
    typed = R.read(store.rows())
    assert sorted(t.kind for t in typed) == sorted(R.SCHEMAS)
    assert all(t.key == Store(tmp_path).get(t.job.to_json()).key for t in typed)


def _required(cls: type[R.Record]) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def test_a_row_missing_a_required_field_names_it(stored):
    job_cls, result_cls = R.SCHEMAS[stored["kind"]]
    assert _required(result_cls), "every result declares what its readers need"
    for half, cls, key in (("config", job_cls, "config"), ("result", result_cls, "metrics")):
        for name in _required(cls):
            broken = {**stored, key: {k: v for k, v in stored[key].items() if k != name}}
            (typed,) = R.read([_row(broken)])
            with pytest.raises(R.RowSchemaError, match=f"field '{name}' is missing") as e:
                getattr(typed, "job" if half == "config" else "result")
            assert f"{stored['kind']} row {stored['key'][:12]} {half}" in str(e.value)


def test_a_field_of_another_type_is_named():
    zoo = next(d for d in STORED if d["kind"] == "zoo")
    with pytest.raises(R.RowSchemaError, match="zoo result field test_accuracy: expected float"):
        R.ZooResult.from_json({**zoo["metrics"], "test_accuracy": "0.9"})
    with pytest.raises(R.RowSchemaError, match=r"metrics job field metrics\[1\]: expected str"):
        R.MetricsJob(arch="mlp", pair=0, metrics=["cka", 3])
    with pytest.raises(R.RowSchemaError, match="bool"):  # a bool is no number
        R.StitchingResult(penalty=True)
    with pytest.raises(R.RowSchemaError, match="expected a JSON object"):
        R.SanityResult.from_json([0.1])


def test_optional_fields_are_left_out_and_nullable_ones_kept():
    job = R.SanityJob(activation="relu", layer=0, group="G_ReLU", repeat=1, epochs=2, lr=1e-3)
    assert "batch_size" not in job.to_json() and "schedule" not in job.to_json()
    # a None that is part of the job key is stored as null
    assert R.MetricsJob(arch="mlp", pair=0, metrics=["cka"]).to_json()["n_samples"] is None
    assert R.AlignmentJob(arch="mlp", pair=0, alignment="none").to_json()["method"] is None


def test_undeclared_keys_are_kept_and_cannot_shadow_fields():
    res = R.StitchingResult.from_json({"penalty": 0.1, "acc_a": 0.9})
    assert res.extra == {"acc_a": 0.9} and res.to_json() == {"penalty": 0.1, "acc_a": 0.9}
    with pytest.raises(R.RowSchemaError, match="declared fields"):
        R.StitchingResult(penalty=0.1, extra={"penalty": 0.2})
    metrics = next(d for d in STORED if d["kind"] == "metrics")
    res = R.MetricsResult.from_json(metrics["metrics"])
    assert res.matrix("cka") == metrics["metrics"]["cka"] and res.matrix("nope") is None


def test_read_refuses_unknown_and_unexpected_kinds():
    zoo = _row(next(d for d in STORED if d["kind"] == "zoo"))
    with pytest.raises(R.RowSchemaError, match="expected 'sanity'"):
        R.read([zoo], "sanity")
    with pytest.raises(R.RowSchemaError, match="no schema"):
        R.read([dataclasses.replace(zoo, kind="mystery")])
