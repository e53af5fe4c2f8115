"""SQLite results store: one row per finished job, keyed by the hash of the job's config.

A run folder ``runs/NAME`` holds ``results.sqlite`` (this store) and ``checkpoints/``. The key of a
job is ``sha256`` of its canonical JSON config (sorted keys, no whitespace), so the same config
always maps to the same row, and ``INSERT OR IGNORE`` makes re-running a finished job a no-op.
WAL mode plus a busy timeout lets several worker processes write at the same time without
corrupting the file; every write is one short transaction. ``close()`` (at the end of a run)
folds the log back and leaves WAL mode, so a finished run folder holds the one file.

The file is marked as ours: ``PRAGMA application_id`` is :data:`APPLICATION_ID` and
``PRAGMA user_version`` the schema version :data:`SCHEMA_VERSION`, both written before the file
switches to WAL so they sit in the main file's header. Opening a file that is not ours (another
program's database, a newer schema, not a database at all) raises :class:`ForeignStoreError` and
writes nothing; stores written before the marks existed (tables ``results`` and ``meta`` only) are
recognised and marked on their next writable open. ``Store(folder, readonly=True)`` (what
:func:`open_existing` returns) opens with ``mode=ro`` and never writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intertwiner._version import __version__
from intertwiner.errors import IntertwinerError

DB_NAME = "results.sqlite"
APPLICATION_ID = 0x49545752  # "ITWR": PRAGMA application_id of every intertwiner results store
SCHEMA_VERSION = 1  # PRAGMA user_version; bump (with a migration) when the tables change
#: The kinds of row the reproduction stages write (``results --kind``).
ROW_KINDS = ("group_table", "zoo", "metrics", "stitching", "sanity", "absorb", "dissection",
             "alignment")  # fmt: skip
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = {"results", "meta"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    started REAL,
    seconds REAL,
    version TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_kind ON results(kind);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreError(IntertwinerError, ValueError):
    """A results store that cannot be opened or a row that cannot be stored (e.g. not JSON-able)."""


class ForeignStoreError(StoreError):
    """A ``results.sqlite`` that intertwiner did not write (or a newer schema): left untouched."""


def _header(path: Path) -> bytes:
    """The first 100 bytes of ``path`` (the SQLite header), read without SQLite (writes nothing)."""
    with open(path, "rb") as fh:
        return fh.read(100)


def _foreign(path: Path, why: str) -> ForeignStoreError:
    return ForeignStoreError(
        f"{path} is not an intertwiner results store ({why}); nothing was written to it. Point "
        "the command at a run folder made by `intertwiner reproduce`, or move the file away."
    )


def _inspect(path: Path, wal: bool) -> tuple[int, int, set[str]]:
    """(application_id, user_version, table names) read through a read-only connection.

    A file in WAL mode is opened ``immutable`` so that SQLite creates no ``-wal``/``-shm`` files
    next to a database that may not be ours; our own files get their marks before switching to WAL.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if wal else "")
    con = sqlite3.connect(uri, uri=True, timeout=60.0)
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        names = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()
    return app_id, version, names


def identify(path: str | os.PathLike) -> str:
    """What ``path`` is: ``"new"`` (absent or empty), ``"ours"``, or ``"legacy"`` (our tables,
    written before stores were marked). Raises ForeignStoreError for anything else; writes nothing.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return "new"
    head = _header(path)
    if not head.startswith(_SQLITE_MAGIC):
        raise _foreign(path, "not an SQLite database")
    if int.from_bytes(head[68:72], "big") == APPLICATION_ID:
        # Our marks are written before WAL, so the header alone is reliable (and needs no
        # connection, which matters while other processes write).
        app_id, version, names = APPLICATION_ID, int.from_bytes(head[60:64], "big"), _TABLES
    else:
        try:
            app_id, version, names = _inspect(path, wal=head[18:20] == b"\x02\x02")
        except sqlite3.DatabaseError as e:
            raise _foreign(path, f"unreadable: {e}") from e
    names = {n for n in names if not n.startswith("sqlite_")}
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise ForeignStoreError(
                f"{path} has schema version {version}, newer than this intertwiner's "
                f"{SCHEMA_VERSION}; upgrade intertwiner to read it"
            )
        return "ours"
    if app_id != 0:
        raise _foreign(path, f"application_id {app_id:#x}, ours is {APPLICATION_ID:#x}")
    if not names:
        return "new"
    if names == _TABLES:
        return "legacy"
    raise _foreign(path, f"tables {sorted(names)}, ours are {sorted(_TABLES)}")


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON is strict (NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def canonical_json(obj: Any) -> str:
    """Canonical JSON of ``obj``: sorted keys, compact separators, NaN/Inf as null."""
    try:
        return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"config/metrics must be JSON-able (dicts, lists, str, numbers): {e}"
        ) from e


def config_key(config: dict) -> str:
    """The job key: hex sha256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


@dataclass(frozen=True)
class Row:
    """One finished job."""

    key: str
    kind: str
    config: dict
    metrics: dict
    started: float | None
    seconds: float | None
    version: str
    created: float

    def flat(self) -> dict:
        """A flat dict for tables: ``config.*`` and ``metrics.*`` columns (nested values as JSON)."""
        out: dict[str, Any] = {"key": self.key, "kind": self.kind}
        for prefix, d in (("config", self.config), ("metrics", self.metrics)):
            for k, v in d.items():
                out[f"{prefix}.{k}"] = v if not isinstance(v, dict | list) else json.dumps(v)
        out.update(seconds=self.seconds, version=self.version, created=self.created)
        return out


class Store:
    """The results store of one run folder. Cheap to open; safe to use from many processes.

    Each method opens its own short-lived connection, so a Store can be pickled to worker
    processes and used there. ``readonly=True`` needs an existing store, opens it with SQLite's
    ``mode=ro`` and refuses ``put``/``set_meta``.
    """

    def __init__(
        self, folder: str | os.PathLike, *, timeout: float = 60.0, readonly: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.timeout = float(timeout)
        self.readonly = bool(readonly)
        try:
            kind = identify(self.path)
            if self.readonly:
                if kind == "new":
                    raise StoreError(f"{self.path} is empty; it holds no results yet")
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            if kind != "ours":
                self._initialise()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open results store {self.path}: {e}; move the file away to start afresh"
            ) from e

    def _initialise(self) -> None:
        """Create the tables and mark the file, all in one transaction, then switch to WAL.

        The marks go in before WAL so that they live in the main file's header; on a store that
        is already in WAL mode (written before the marks existed) a checkpoint moves them there.
        """
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                con.execute(statement)
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()

    def close(self) -> None:
        """Fold the write-ahead log into ``results.sqlite`` and leave WAL mode, so that a finished
        run folder holds the one file, and read-only opens later create no ``-wal``/``-shm``.

        Idempotent; the Store stays usable (the next write switches back to WAL). Best effort:
        while another process has the file open (a reader), it stays in WAL mode, which is safe;
        SQLite removes those files when the last writer closes."""
        if self.readonly or not self.path.is_file():
            return
        con = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 1000")  # a reader is no reason to stall a run
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.OperationalError:  # busy: another connection holds the file
            pass
        finally:
            con.close()

    @property
    def checkpoints(self) -> Path:
        """Folder for checkpoints, beside the database."""
        return self.folder / "checkpoints"

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            con = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            return con
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        # WAL: readers never block writers; synchronous=NORMAL is durable across process kills.
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    # -- writing ------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only; open Store(folder) to write")

    def put(
        self,
        kind: str,
        config: dict,
        metrics: dict,
        *,
        started: float | None = None,
        seconds: float | None = None,
    ) -> bool:
        """Store one finished job; returns False (and changes nothing) if its key is present."""
        self._writable()
        key = config_key(config)
        row = (
            key,
            str(kind),
            canonical_json(config),
            canonical_json(metrics),
            started,
            seconds,
            __version__,
            time.time(),
        )
        con = self._connect()
        try:
            cur = con.execute("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?)", row)
            return cur.rowcount == 1
        finally:
            con.close()

    def set_meta(self, name: str, value: Any) -> None:
        """Store run-level metadata (the preset, data, executor, ...); later values replace."""
        self._writable()
        con = self._connect()
        try:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, canonical_json(value)))
        finally:
            con.close()

    # -- reading ------------------------------------------------------------------------------
    def meta(self) -> dict:
        """Every run-level metadata entry, by name."""
        con = self._connect()
        try:
            return {n: json.loads(v) for n, v in con.execute("SELECT name, value FROM meta")}
        finally:
            con.close()

    def keys(self) -> set[str]:
        con = self._connect()
        try:
            return {k for (k,) in con.execute("SELECT key FROM results")}
        finally:
            con.close()

    def __contains__(self, config: object) -> bool:
        if not isinstance(config, dict):
            return False
        con = self._connect()
        try:
            q = con.execute("SELECT 1 FROM results WHERE key = ?", (config_key(config),))
            return q.fetchone() is not None
        finally:
            con.close()

    def __len__(self) -> int:
        con = self._connect()
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()

    def get(self, config: dict) -> Row | None:
        """The row of ``config``, or None if that job has not finished."""
        rows = list(self._select("WHERE key = ?", (config_key(config),)))
        return rows[0] if rows else None

    def rows(self, kind: str | None = None) -> list[Row]:
        """All rows (of one kind), in insertion order."""
        if kind is None:
            return list(self._select("", ()))
        return list(self._select("WHERE kind = ?", (kind,)))

    def kinds(self) -> list[str]:
        con = self._connect()
        try:
            return [k for (k,) in con.execute("SELECT DISTINCT kind FROM results ORDER BY kind")]
        finally:
            con.close()

    def _select(self, where: str, args: tuple) -> Iterator[Row]:
        con = self._connect()
        try:
            q = con.execute(
                "SELECT key, kind, config, metrics, started, seconds, version, created "
                f"FROM results {where} ORDER BY rowid",
                args,
            )
            for key, kind, cfg, met, started, seconds, version, created in q.fetchall():
                yield Row(
                    key, kind, json.loads(cfg), json.loads(met), started, seconds, version, created
                )
        finally:
            con.close()

    # -- export -------------------------------------------------------------------------------
    def exported(self, kind: str | None) -> list[Row]:
        """The rows an export shows: all, or those of ``kind``; an unknown kind, or a kind this
        run has no rows of, is an error naming the kinds there are (never an empty export)."""
        from intertwiner.errors import DataNotFoundError, InvalidOptionError

        present = self.kinds()
        if not present:
            raise DataNotFoundError(
                f"{self.folder} has no results yet; run `intertwiner reproduce --out "
                f"{self.folder}` (it resumes) and export when jobs have finished"
            )
        if kind is None:
            return self.rows()
        if kind in present:
            return self.rows(kind)
        has = ", ".join(present) or "no rows yet"
        if kind not in ROW_KINDS:
            known = ", ".join(dict.fromkeys([*ROW_KINDS, *present]))
            raise InvalidOptionError(
                f"unknown kind {kind!r}; choose one of {known} (this run has {has})"
            )
        raise DataNotFoundError(
            f"this run has no {kind} rows; it has {has} (run `intertwiner reproduce` with a "
            "preset that has that stage)"
        )

    def to_json(self, kind: str | None = None) -> str:
        """Every row as a JSON list of objects (config and metrics nested)."""
        return json.dumps(
            [
                {
                    "key": r.key,
                    "kind": r.kind,
                    "config": r.config,
                    "metrics": r.metrics,
                    "seconds": r.seconds,
                    "version": r.version,
                    "created": r.created,
                }
                for r in self.exported(kind)
            ],
            indent=2,
        )

    def to_csv(self, kind: str | None = None) -> str:
        """Rows as CSV with flattened ``config.*``/``metrics.*`` columns (union over rows)."""
        return rows_to_csv([r.flat() for r in self.exported(kind)])

    def to_long_csv(self, kind: str | None = None) -> str:
        """Tidy CSV: one line per number (see ``long_rows``), for pandas/R/spreadsheets."""
        return rows_to_csv(long_rows(self.exported(kind)))


#: Config fields kept as identifying columns in the long format (when scalar).
_ID_FIELDS = ("arch", "activation", "seed", "pair", "site_index", "layer_label", "layer",
              "group", "repeat", "role", "kind", "epochs")  # fmt: skip


def long_rows(rows: Iterable[Row]) -> list[dict]:
    """Tidy lines: ``kind, job, <identifying config fields>, metric, i, j, value``.

    A scalar metric is one line (i, j empty); a vector one line per entry (i); a matrix one line
    per cell (i, j), with ``i_name``/``j_name`` from the row's ``sites`` (or ``layers``) list when
    it has one. Text results (e.g. a stitch's ``site``) are identifying columns, not lines, and
    missing values (None) are left out, so every line's value is a number; list-valued config
    fields such as ``["low_rank", 2]`` read ``low_rank_2``; nested dicts become ``metric.key``
    names. Nothing is JSON."""
    return [line for r in rows for line in _long_lines(r)]


def _long_lines(r: Row) -> list[dict]:
    out: list[dict] = []
    ident = {"kind": r.kind, "job": r.key[:12]}
    for f in _ID_FIELDS:
        v = _ident_value(r.config.get(f))
        if v is not None:
            ident[f] = v
    # Text results (a stitch's site, a solver's name) identify the numbers: columns, not lines.
    for k, v in r.metrics.items():
        if isinstance(v, str) and k not in ("sites", "layers"):
            ident[k if ident.get(k, v) == v else f"{r.kind}_{k}"] = v
    names = r.metrics.get("sites") or r.metrics.get("layers")
    names = names if isinstance(names, list) else None

    def emit(metric: str, value: Any, i: Any = "", j: Any = "") -> None:
        line = {**ident, "metric": metric, "i": i, "j": j}
        if names is not None and i != "" and j != "":
            line["i_name"] = names[i] if i < len(names) else ""
            line["j_name"] = names[j] if j < len(names) else ""
        out.append({**line, "value": value})

    def walk(metric: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{metric}.{k}", v)
        elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            for i, row in enumerate(value):
                for j, v in enumerate(row):
                    emit(metric, v, i, j)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                emit(metric, v, i)
        else:
            emit(metric, value)

    for k, v in r.metrics.items():
        if k not in ("sites", "layers") and not isinstance(v, str) and v is not None:
            walk(k, v)
    if r.seconds is not None:
        emit("seconds", r.seconds)
    return out


def _ident_value(v: Any) -> str | int | float | bool | None:
    """A config field as an identifying cell: scalars as they are, a flat list such as a stitch
    kind ``["low_rank", 2]`` as ``low_rank_2`` (the report's label), anything else None."""
    if isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, list) and v and all(isinstance(x, str | int | float) for x in v):
        return "_".join(str(x) for x in v)
    return None


def rows_to_csv(flat: Iterable[dict]) -> str:
    """CSV text of flat dicts; the header is the union of keys in first-seen order."""
    flat = list(flat)
    fields: dict[str, None] = {}
    for r in flat:
        fields.update(dict.fromkeys(r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def open_existing(folder: str | os.PathLike) -> Store:
    """Open the store of an existing run folder read-only (writes nothing, refuses a foreign file),
    or raise DataNotFoundError saying what to run."""
    from intertwiner.errors import DataNotFoundError

    path = Path(folder) / DB_NAME
    if not path.is_file():
        raise DataNotFoundError(
            f"no results store at {path}; run `intertwiner reproduce --out {folder}` first"
        )
    return Store(folder, readonly=True)
