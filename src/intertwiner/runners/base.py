"""The executor interface: run a job function over many JSON-able configs, yield as they finish.

A job function is an importable top-level function ``fn(config: dict) -> dict`` (the metrics row).
Every executor wraps it in :func:`execute`, which times the call and turns an exception into a
:class:`JobResult` with the traceback, so one failed job never takes the others down, and runs it
in :func:`job_environment`, so that its row depends on its config and thread count alone, never on
what the process ran before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def job_seed(config: dict) -> int:
    """A 63-bit seed from the job's stored config (runtime ``_`` keys left out): two jobs draw
    different streams, and a job draws the same stream in any process."""
    stored = {k: v for k, v in config.items() if not str(k).startswith("_")}
    text = json.dumps(stored, sort_keys=True, separators=(",", ":"), default=repr)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@contextmanager
def job_environment(config: dict, threads: int | None) -> Iterator[None]:
    """Run a job with ``threads`` torch threads and every global RNG (torch, numpy, ``random``)
    seeded from its config; the process's thread count and RNG states are restored afterwards.

    Job functions draw from their own ``torch.Generator``s; this makes any draw from a global RNG
    (inside a model, a library) a function of the config too, instead of the process's history.
    """
    import numpy as np
    import torch

    seed = job_seed(config)
    threads_before = torch.get_num_threads()
    # The legacy global numpy RNG is what third-party code draws from, so it is the one to pin.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
        torch.set_num_threads(threads_before)


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """Make this worker process exit once ``parent`` (the pid that started it) is gone: a daemon
    thread compares the parent pid every ``every`` seconds. Pool initializer of the process pools
    here: a driver killed with SIGKILL runs no clean-up, and its spawned workers would otherwise
    wait for work (or finish a long job) as orphans."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)  # no clean-up to run: the work of a dead driver has no one to go to

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def execute(fn: JobFn, config: dict, threads: int | None = None) -> JobResult:
    """Run ``fn(config)`` in :func:`job_environment` with ``threads`` torch threads (None: the
    process's own) and capture its result or traceback (runs inside the worker)."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        with job_environment(config, threads):
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
