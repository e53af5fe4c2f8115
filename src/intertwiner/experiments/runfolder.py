"""A run folder holds one run: its identity, its lock, and the clean-up of interrupted writes.

The identity (preset name, the preset's configuration, the resolved data spec) is recorded in the
store's ``meta`` table when the run is created, with the library version. A later ``reproduce``
into the same folder must have the same identity, or it is refused with the differences
(:class:`RunConflictError`); ``sibling_for`` picks a fresh folder beside it instead.

The lock is an advisory ``flock`` on ``RUN/run.lock``, which also holds the holder's pid, host and
start time for the message of :class:`RunLockedError`. The kernel drops a flock when its process
dies (``kill -9`` included), so the lock of a dead run is recovered by the next one without any
guessing from pids. A run that ends (normally or by an exception) removes ``run.lock`` while it
still holds the lock; a process that locked the file just before it was removed sees that its file
is no longer the one at the path and locks the new one, so two processes never hold two different
files. Only a killed run leaves ``run.lock`` behind (unlocked, harmless).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from intertwiner._version import __version__
from intertwiner.errors import IntertwinerError, InvalidOptionError
from intertwiner.store import DB_NAME, Store, identify

LOCK_NAME = "run.lock"


class RunConflictError(IntertwinerError, ValueError):
    """A run folder that already holds a run with another preset, configuration or data."""


class RunLockedError(IntertwinerError, RuntimeError):
    """A run folder that another live ``reproduce`` process is writing to."""


# -- location ---------------------------------------------------------------------------------
def check_location(folder: Path) -> None:
    """Refuse (InvalidOptionError) a run folder that is an existing file or lies inside one,
    before any data is read; ``RunLock`` reports a folder that cannot be created."""
    if folder.exists() and not folder.is_dir():
        raise InvalidOptionError(
            f"{folder} is an existing file, not a folder; a run goes in a folder (new or holding "
            "a run): choose another --out"
        )
    parent = folder if folder.exists() else folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidOptionError(
            f"{folder} lies inside {parent}, which is a file: choose another --out"
        )


# -- identity ---------------------------------------------------------------------------------
def identity(preset: str, preset_config: dict, data: dict) -> dict:
    """What makes two runs the same run: the preset, its configuration and the resolved data."""
    return {"preset": preset, "config": preset_config, "data": data}


def _normalise(obj: Any) -> Any:
    """JSON round trip, so that tuples and lists (and int keys and str keys) compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Readable ``path: old -> new`` lines for every leaf where ``old`` and ``new`` differ."""
    old, new = _normalise(old), _normalise(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(old.keys() | new.keys()):
            sub = f"{where}.{k}" if where else str(k)
            if k not in new:
                out.append(f"{sub}: {_short(old[k])} -> (absent)")
            elif k not in old:
                out.append(f"{sub}: (absent) -> {_short(new[k])}")
            else:
                out += differences(old[k], new[k], sub)
        return out
    if old != new:
        return [f"{where or 'value'}: {_short(old)} -> {_short(new)}"]
    return []


def recorded_identity(meta: dict) -> dict | None:
    """The identity stored in a run's meta, rebuilt from the older ``run`` entry if need be."""
    if "identity" in meta:
        return {k: meta["identity"][k] for k in ("preset", "config", "data")}
    run = meta.get("run")
    if not isinstance(run, dict) or "preset_config" not in run:
        return None
    data = {"name": run.get("data") or run["preset_config"].get("data")}
    if run.get("data_dir"):
        data["root"] = os.path.abspath(run["data_dir"])
    return identity(run["preset"], run["preset_config"], data)


def conflicts(folder: Path, ident: dict, plan_keys: set[str]) -> list[str]:
    """Why ``folder`` cannot take the run ``ident`` (empty when it can); opens nothing for writing.

    A folder with a store but no recorded identity is accepted only if every row in it is a job of
    this run's plan.
    """
    if identify(folder / DB_NAME) == "new":
        return []
    store = Store(folder, readonly=True)
    old = recorded_identity(store.meta())
    if old is not None:  # the preset first: it explains most of the rest
        return [d for k in ("preset", "data", "config") for d in differences(old[k], ident[k], k)]
    foreign = store.keys() - plan_keys
    if foreign:
        return [
            f"{len(foreign)} stored rows are no job of this run, and the folder records no preset"
        ]
    return []


def refusal(folder: Path, diffs: list[str]) -> RunConflictError:
    """The error for a folder that holds another run, listing the differences."""
    shown = "\n  ".join(diffs[:20]) + (
        f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
    )
    return RunConflictError(
        f"{folder} already holds another run; it differs in:\n  {shown}\n"
        "Nothing was run. Use another --out, or --new-run to start this run in a new folder "
        "beside it."
    )


def sibling_for(folder: Path, ident: dict, plan_keys: set[str]) -> Path:
    """``folder`` if it can take the run, else the first of ``folder-2``, ``folder-3``, ... that
    is new or already holds this very run (so that repeating the command resumes it)."""
    if not conflicts(folder, ident, plan_keys):
        return folder
    n = 2
    while conflicts(candidate := folder.with_name(f"{folder.name}-{n}"), ident, plan_keys):
        n += 1
    return candidate


def record_identity(store: Store, ident: dict) -> list[str]:
    """Record ``ident`` on a new run; returns warnings (a library version other than the run's)."""
    meta = store.meta()
    if "identity" not in meta:
        store.set_meta(
            "identity", {**ident, "library_version": __version__, "created": time.time()}
        )
        return []
    created_with = meta["identity"].get("library_version")
    if created_with != __version__:
        return [
            f"this run was created with intertwiner {created_with} and is resumed with "
            f"{__version__}; each row records the version that computed it"
        ]
    return []


# -- lock -------------------------------------------------------------------------------------
def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another process (no holder recorded yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')}, since {started}"


class RunLock:
    """Exclusive advisory lock on a run folder (``with RunLock(folder): ...``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming the holder; never waits."""
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): refuse rather than run unlocked
            raise RunLockedError(
                "reproduce locks its run folder with POSIX file locks (fcntl), which this "
                "platform lacks; run it on Linux or macOS (or WSL)"
            ) from None
        for _ in range(100):
            fd = self._open()
            self._lock(fd, fcntl)
            if self._is_current(fd):
                break
            # Its holder released and removed the file between our open and our lock: our lock
            # is on a file no one else will open again. Lock the file now at the path instead.
            os.close(fd)
        else:  # pragma: no cover (100 releases in a row while we tried)
            raise RunLockedError(f"{self.path} keeps being replaced; try again")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only file system, no permission, a file in the way
            raise InvalidOptionError(
                f"cannot create the run folder {self.path.parent} ({e.strerror or e}): choose "
                "another --out"
            ) from e

    def _lock(self, fd: int, fcntl: Any) -> None:
        """flock ``fd`` without waiting; closes it and raises RunLockedError when that fails."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is being written by another reproduce run "
                f"({_holder(self.path)}); wait for it to finish or stop that process. "
                f"The lock is released when that process exits, even if it is killed."
            ) from None
        except OSError as e:
            os.close(fd)
            raise RunLockedError(
                f"cannot lock {self.path} ({e}); its file system does not support file locks. "
                "Put the run folder on a local disk."
            ) from e

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at the lock's path (not one a releaser removed)."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent).

        The file is removed while the lock is still held, and ``acquire`` checks after locking
        that its file is still the one at the path, so two processes never hold locks on two
        different files; a finished run folder keeps no ``run.lock``."""
        if self._fd is None:
            return
        import fcntl

        if self._is_current(self._fd):
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- leftovers --------------------------------------------------------------------------------
def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files of writes that a killed run left behind; call only under the lock.

    Covers checkpoint temporaries (``checkpoints.remove_temporaries``) and ``report.html.tmp``.
    """
    from intertwiner.checkpoints import remove_temporaries

    folder = Path(folder)
    removed = remove_temporaries(folder / "checkpoints")
    report_tmp = folder / "report.html.tmp"
    if report_tmp.is_file():
        report_tmp.unlink()
        removed.append(report_tmp)
    return removed
