"""The experiment framework: a stage is a job function plus a list of JSON-able job configs.

Stored configs never contain keys starting with ``_``: those (the run folder ``_run``) are added
when the job runs, so a run folder can be moved without changing any job key.
"""

from __future__ import annotations

import importlib
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
