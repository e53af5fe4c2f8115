"""The executor interface: run a job function over many JSON-able configs, yield as they finish.

A job function is an importable top-level function ``fn(config: dict) -> dict`` (the metrics row).
Every executor wraps it in :func:`execute`, which times the call and turns an exception into a
:class:`JobResult` with the traceback, so one failed job never takes the others down.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from intertwiner.errors import IntertwinerError, InvalidInputError

JobFn = Callable[[dict], dict]


class ExecutorError(IntertwinerError, RuntimeError):
    """An executor that cannot start (unknown name, missing package, unreachable cluster)."""


@dataclass
class JobResult:
    """The outcome of one job: its metrics ``value`` or the ``error`` traceback, and its timing."""

    value: dict | None
    error: str | None
    started: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(fn: JobFn, config: dict) -> JobResult:
    """Run ``fn(config)`` and capture its result or traceback (runs inside the worker)."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        value = fn(config)
        if not isinstance(value, dict):
            raise InvalidInputError(
                f"job function {fn!r} returned {type(value).__name__}, not a dict"
            )
        return JobResult(value, None, started, time.perf_counter() - t0)
    except Exception:  # noqa: BLE001 (reported per job; the run goes on)
        return JobResult(None, traceback.format_exc(), started, time.perf_counter() - t0)


class Executor:
    """Base class. ``map(fn, configs)`` yields ``(config, JobResult)`` in completion order."""

    name = "base"

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers / cluster connections (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict:
        """JSON-able description for the run's provenance."""
        return {"executor": self.name}
