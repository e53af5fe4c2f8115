"""Results store: idempotent inserts, canonical keys, export, and concurrent writers."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import sqlite3

import pytest

from intertwiner.errors import DataNotFoundError
from intertwiner.store import (
    _SCHEMA,
    APPLICATION_ID,
    DB_NAME,
    SCHEMA_VERSION,
    ForeignStoreError,
    Store,
    StoreError,
    config_key,
    identify,
    open_existing,
)


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
        # Generous: each spawned writer imports torch, which takes long on a loaded machine.
        p.join(300)
        assert p.exitcode == 0
    s = Store(tmp_path)
    assert len(s) == n + n * k
    assert len(s.keys()) == len(s)
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


# -- identification: our marks, foreign files refused untouched, read-only opens ----------------
def _snapshot(folder) -> dict:
    """Every file in ``folder`` with its bytes: refusals must leave this unchanged."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _foreign_db(folder, *, wal: bool = False, app_id: int = 0, tables=("people",)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(folder / DB_NAME)
    if wal:
        con.execute("PRAGMA journal_mode = WAL")
    if app_id:
        con.execute(f"PRAGMA application_id = {app_id}")
    for t in tables:
        con.execute(f"CREATE TABLE {t} (name TEXT, value TEXT)")
    con.execute(f"INSERT INTO {tables[0]} VALUES ('ada', '1')")
    con.commit()
    con.close()


def _legacy_store(folder) -> None:
    """A store as written before the marks existed: our tables, application_id 0, WAL."""
    folder.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(folder / DB_NAME)
    con.execute("PRAGMA journal_mode = WAL")
    con.executescript(_SCHEMA)
    con.execute(
        "INSERT INTO results VALUES (?,?,?,?,?,?,?,?)",
        (config_key({"seed": 1}), "x", '{"seed":1}', '{"acc":0.5}', None, 1.0, "0.0.9", 1.0),
    )
    con.commit()
    con.close()


def test_new_store_carries_its_marks_in_the_file_header(tmp_path):
    Store(tmp_path).put("x", {"seed": 1}, {})
    head = (tmp_path / DB_NAME).read_bytes()[:100]  # what another tool sees, without SQLite
    assert int.from_bytes(head[68:72], "big") == APPLICATION_ID
    assert int.from_bytes(head[60:64], "big") == SCHEMA_VERSION
    assert identify(tmp_path / DB_NAME) == "ours"


@pytest.mark.parametrize("wal", [False, True])
@pytest.mark.parametrize("opener", ["write", "read"])
def test_foreign_database_is_refused_and_left_untouched(tmp_path, wal, opener):
    _foreign_db(tmp_path, wal=wal)
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignStoreError, match="not an intertwiner results store.*people"):
        Store(tmp_path) if opener == "write" else open_existing(tmp_path)
    assert _snapshot(tmp_path) == before  # no tables added, no -wal/-shm files created


def test_foreign_application_id_is_refused_even_with_our_table_names(tmp_path):
    _foreign_db(tmp_path, app_id=0x1234, tables=("results", "meta"))
    before = _snapshot(tmp_path)
    with pytest.raises(ForeignStoreError, match="application_id 0x1234"):
        open_existing(tmp_path)
    with pytest.raises(ForeignStoreError):
        Store(tmp_path)
    assert _snapshot(tmp_path) == before


def test_not_a_database_and_newer_schema_are_refused(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"plain text, not SQLite " * 50)
    with pytest.raises(ForeignStoreError, match="not an SQLite database"):
        open_existing(tmp_path)
    newer = tmp_path / "newer"
    Store(newer).put("x", {"seed": 1}, {})
    con = sqlite3.connect(newer / DB_NAME)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(ForeignStoreError, match="upgrade intertwiner"):
        open_existing(newer)


def test_legacy_store_is_read_as_is_and_marked_on_the_next_write_open(tmp_path):
    _legacy_store(tmp_path)
    before = (tmp_path / DB_NAME).read_bytes()
    assert identify(tmp_path / DB_NAME) == "legacy"
    assert [r.metrics for r in open_existing(tmp_path).rows()] == [{"acc": 0.5}]
    assert (tmp_path / DB_NAME).read_bytes() == before  # reading changed nothing
    s = Store(tmp_path)
    assert identify(tmp_path / DB_NAME) == "ours"
    assert [r.metrics for r in s.rows()] == [{"acc": 0.5}]  # rows survive the upgrade


def test_read_only_store_refuses_writes_and_changes_nothing(tmp_path):
    Store(tmp_path).put("x", {"seed": 1}, {"acc": 0.5})
    main = (tmp_path / DB_NAME).read_bytes()
    ro = open_existing(tmp_path)
    assert ro.readonly and len(ro) == 1 and ro.meta() == {}
    with pytest.raises(StoreError, match="read-only"):
        ro.put("x", {"seed": 2}, {})
    with pytest.raises(StoreError, match="read-only"):
        ro.set_meta("run", {})
    assert (tmp_path / DB_NAME).read_bytes() == main
    assert len(Store(tmp_path)) == 1


def test_read_only_open_of_an_empty_file_says_so(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="holds no results"):
        open_existing(tmp_path)


def test_close_leaves_one_file_that_reads_and_writes_again(tmp_path):
    """A finished run's store is one file: no -wal/-shm beside it, none made by a later read-only
    open; a later write goes back to WAL (issue 27)."""
    s = Store(tmp_path)
    for i in range(3):
        s.put("k", {"i": i}, {"v": i})
    Store(tmp_path, readonly=True).rows()  # a reader, as the report is
    s.close()
    s.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]
    assert [r.metrics["v"] for r in Store(tmp_path, readonly=True).rows()] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert s.put("k", {"i": 3}, {"v": 3}) and len(s) == 4
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
