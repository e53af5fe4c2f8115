"""SQLite results store: one row per finished job, keyed by the hash of the job's config.

A run folder ``runs/NAME`` holds ``results.sqlite`` (this store) and ``checkpoints/``. The key of a
job is ``sha256`` of its canonical JSON config (sorted keys, no whitespace), so the same config
always maps to the same row, and ``INSERT OR IGNORE`` makes re-running a finished job a no-op.
WAL mode plus a busy timeout lets several worker processes write at the same time without
corrupting the file; every write is one short transaction.
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
    processes and used there.
    """

    def __init__(self, folder: str | os.PathLike, *, timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.timeout = float(timeout)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open results store {self.path}: {e}; move the file away to start afresh"
            ) from e

    @property
    def checkpoints(self) -> Path:
        """Folder for checkpoints, beside the database."""
        return self.folder / "checkpoints"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        # WAL: readers never block writers; synchronous=NORMAL is durable across process kills.
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    # -- writing ------------------------------------------------------------------------------
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
        con = self._connect()
        try:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, canonical_json(value)))
        finally:
            con.close()

    # -- reading ------------------------------------------------------------------------------
    def meta(self) -> dict:
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
                for r in self.rows(kind)
            ],
            indent=2,
        )

    def to_csv(self, kind: str | None = None) -> str:
        """Rows as CSV with flattened ``config.*``/``metrics.*`` columns (union over rows)."""
        return rows_to_csv([r.flat() for r in self.rows(kind)])


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
    """Open the store of an existing run folder, or raise DataNotFoundError saying what to run."""
    from intertwiner.errors import DataNotFoundError

    path = Path(folder) / DB_NAME
    if not path.is_file():
        raise DataNotFoundError(
            f"no results store at {path}; run `intertwiner reproduce --out {folder}` first"
        )
    return Store(folder)
