"""Results store: idempotent inserts, canonical keys, export, and concurrent writers."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import sqlite3

import pytest

from intertwiner.errors import DataNotFoundError
from intertwiner.store import Store, StoreError, config_key, open_existing


def test_key_is_canonical_and_order_free():
    a = {"b": 1, "a": [1, 2, {"y": 2.5, "x": None}]}
    b = {"a": [1, 2, {"x": None, "y": 2.5}], "b": 1}
    assert config_key(a) == config_key(b)
    assert config_key(a) != config_key({**a, "b": 2})
    assert len(config_key(a)) == 64


def test_put_is_idempotent_and_round_trips(tmp_path):
    s = Store(tmp_path)
    cfg = {"stage": "x", "seed": 3}
    assert s.put("x", cfg, {"acc": 0.5, "nan": float("nan")}, seconds=1.5)
    assert not s.put("x", cfg, {"acc": 0.9})  # second put of the same config changes nothing
    assert len(s) == 1 and cfg in s and {"seed": 4} not in s
    row = s.get(cfg)
    assert row.metrics == {"acc": 0.5, "nan": None} and row.seconds == 1.5
    assert row.config == cfg and row.kind == "x" and row.version
    # A fresh Store object on the same folder sees the same data.
    assert Store(tmp_path).rows("x")[0].key == config_key(cfg)


def test_rejects_non_json(tmp_path):
    with pytest.raises(StoreError):
        Store(tmp_path).put("x", {"f": object()}, {})


def test_export_csv_json(tmp_path):
    s = Store(tmp_path)
    s.put("a", {"seed": 1}, {"acc": 0.25, "mat": [[1, 2]]})
    s.put("b", {"seed": 2, "arch": "mlp"}, {"loss": 1.0})
    data = json.loads(s.to_json())
    assert [d["kind"] for d in data] == ["a", "b"]
    assert data[0]["metrics"]["mat"] == [[1, 2]]
    rows = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert len(rows) == 2 and rows[0]["metrics.acc"] == "0.25" and rows[1]["config.arch"] == "mlp"
    assert rows[0]["config.arch"] == ""  # union of columns, missing cells empty
    assert len(list(csv.DictReader(io.StringIO(s.to_csv("b"))))) == 1


def test_meta_and_open_existing(tmp_path):
    with pytest.raises(DataNotFoundError):
        open_existing(tmp_path / "nope")
    s = Store(tmp_path)
    s.set_meta("run", {"preset": "quick"})
    s.set_meta("run", {"preset": "full"})
    assert open_existing(tmp_path).meta() == {"run": {"preset": "full"}}


def test_corrupt_file_raises(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="move the file away"):
        Store(tmp_path)


def _writer(folder: str, wid: int, n: int) -> None:
    s = Store(folder)
    for i in range(n):
        # Half the configs are shared by every writer: they must be stored exactly once.
        s.put("w", {"i": i}, {"writer": wid})
        s.put("w", {"i": i, "writer": wid}, {"writer": wid})


def test_concurrent_writers_never_corrupt(tmp_path):
    ctx = mp.get_context("spawn")
    n, k = 40, 4
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n)) for w in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = Store(tmp_path)
    assert len(s) == n + n * k
    assert len(s.keys()) == len(s)
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
