"""Atomic file writes: the one place that writes results to disk.

Each writer fills a temporary ``.NAME.RANDOM.tmp`` beside the target, flushes it to disk and
renames it over the target with ``os.replace``, so a crash leaves the old file or none, never
half a file. ``is_temporary`` recognises leftovers of an interrupted write.

The temporary is created with mode 0666 less the process's umask, as ``open`` creates files (0644
under the usual umask 022), so that colleagues can read reports and checkpoints on a shared
machine; ``tempfile.mkstemp`` would make every result 0600.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "is_temporary", "save_figure", "write_bytes", "write_text"]


def atomic_write(path: str | os.PathLike, fill: Callable[[IO[bytes]], None]) -> Path:
    """Call ``fill(f)`` on a binary temporary file, then move it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new ``.NAME.RANDOM.tmp`` beside ``path``, opened for writing: (descriptor, its path).

    Mode 0o666 lets the kernel apply the umask (and a folder's default ACL) itself; reading the
    umask instead would mean setting it, which races with other threads."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name another writer drew: draw again
            continue


def write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(payload))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` into ``path`` atomically; the format is ``format=`` if given, else the
    suffix's (PNG without one)."""
    fmt = savefig_kwargs.pop("format", None) or Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def is_temporary(path: str | os.PathLike) -> bool:
    """A leftover of an interrupted write: ``.NAME.RANDOM.tmp``."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")
