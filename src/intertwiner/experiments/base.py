"""The experiment framework: a stage is a job function plus a list of JSON-able job configs.

Stored configs never contain keys starting with ``_``: those (the run folder ``_run``) are added
when the job runs, so a run folder can be moved without changing any job key.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """One stage of a run: ``fn(config) -> metrics`` applied to every config in ``configs``.

    ``kind`` names the rows in the store; ``requires`` lists modules that must import for the stage
    to run, as ``"module"`` or ``"module:attr1,attr2"`` (a stage whose dependency is missing is
    reported as not run, never faked).
    """

    name: str
    kind: str
    fn: Callable[[dict], dict]
    configs: list[dict]
    requires: tuple[str, ...] = ()
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        """Requirements that fail to import, as ``"module: error"`` strings."""
        out = []
        for req in self.requires:
            mod, _, attrs = req.partition(":")
            try:
                m = importlib.import_module(mod)
                for a in filter(None, attrs.split(",")):
                    getattr(m, a)
            except Exception as e:  # noqa: BLE001 (any import failure means "not available")
                out.append(f"{req}: {type(e).__name__}: {e}")
        return out


def stored_config(config: dict) -> dict:
    """The part of a job config that is stored and hashed (no ``_``-prefixed runtime keys)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def run_dir(config: dict) -> Path:
    """The run folder passed to a job as ``config["_run"]`` (the current folder if absent)."""
    return Path(config.get("_run", "."))


def checkpoint_path(config: dict, name: str) -> Path:
    """Where a checkpoint of this run lives: ``RUN/checkpoints/NAME.safetensors``."""
    return run_dir(config) / "checkpoints" / f"{name}.safetensors"


def run_relative(config: dict, path: str | os.PathLike) -> str:
    """``path`` relative to the job's run folder, POSIX style: what rows store, so that a run
    folder can be moved or shared. A path outside the run folder is returned absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(run_dir(config).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_stored_path(folder: str | os.PathLike, stored: str) -> Path:
    """Where a path stored in a row of the run in ``folder`` is now.

    Relative paths (current rows) are joined to ``folder``. Absolute paths (rows written before
    paths were stored relative) are mapped into ``folder`` from their last ``checkpoints``
    component when that file exists there, so a moved run folder still finds its files.
    """
    folder, path = Path(folder), Path(stored)
    if not path.is_absolute():
        return folder / path
    parts = path.parts
    if "checkpoints" in parts:
        i = len(parts) - 1 - parts[::-1].index("checkpoints")
        inside = folder.joinpath(*parts[i:])
        if inside.exists():
            return inside
    return path
