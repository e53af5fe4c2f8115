"""Local executor: a process pool (``workers=1`` runs in-process, handy for debugging)."""

from __future__ import annotations

import functools
import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from intertwiner.runners.base import (
    Executor,
    ExecutorError,
    JobFn,
    JobResult,
    available_cores,
    execute,
    exit_with_parent,
)


class LocalExecutor(Executor):
    """Run jobs in a ``concurrent.futures`` process pool of ``workers`` processes.

    Workers are started with ``spawn`` (torch is not fork-safe once its thread pools exist), so the
    job function must be importable by name. ``workers=None`` uses one worker per core. Every job
    runs with ``threads_per_worker`` torch threads (default: cores / workers), in a worker or in
    this process alike: a row never depends on the thread count a caller happened to leave.

    Faults: a worker process that dies (killed, out of memory) breaks the pool; the jobs it held
    come back as failed results saying so, and the remaining jobs go to a new pool. Workers exit
    by themselves when this process dies, ``kill -9`` included (``exit_with_parent``).
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None) -> None:
        if threads_per_worker is not None and int(threads_per_worker) < 1:
            raise ExecutorError(f"threads per worker must be at least 1, got {threads_per_worker}")
        cores = available_cores()
        self.workers = max(1, int(workers) if workers else cores)
        self.threads = int(threads_per_worker or max(1, cores // self.workers))
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        configs = list(configs)
        run = functools.partial(execute, fn, threads=self.threads)
        if self.workers == 1 or len(configs) <= 1 and self._pool is None:
            for cfg in configs:
                yield cfg, run(cfg)
            return
        todo: Iterator[dict] = iter(configs)
        pending: dict[Future, dict] = {}
        while True:
            todo = self._submit_some(run, todo, pending)
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                done, _ = wait(pending)  # a broken pool fails every job it holds at once
                self._discard_pool()
            for fut in done:
                yield pending.pop(fut), _outcome(fut)

    def _submit_some(
        self, run: Callable[[dict], JobResult], todo: Iterator[dict], pending: dict[Future, dict]
    ) -> Iterator[dict]:
        """Submit jobs of ``todo`` until 2 per worker are pending (so an interrupted run has
        little in flight); returns what is left of ``todo``. Every pending job is in the current
        pool: one found broken is replaced once none of its jobs is pending any more."""
        while len(pending) < 2 * self.workers and (cfg := next(todo, None)) is not None:
            try:
                pending[self._get_pool().submit(run, cfg)] = cfg
            except BrokenProcessPool:  # it broke since the last wait
                todo = itertools.chain([cfg], todo)
                if pending:  # they fail in the next wait, which replaces the pool
                    break
                self._discard_pool()  # an idle worker died: nothing of it to report
        return todo

    def _discard_pool(self) -> None:
        """Drop a pool that lost a worker (it takes no more jobs); the next job starts a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict:
        """Workers and the torch threads each job runs with (results depend on the latter)."""
        return {"executor": self.name, "workers": self.workers, "threads": self.threads}


def _outcome(fut: Future) -> JobResult:
    """The job's result, or a failed one when its worker process died (the pool broke)."""
    if isinstance(fut.exception(), BrokenProcessPool):
        return JobResult(
            None,
            "a worker process of the local pool died (killed, or out of memory) while this job "
            "was running or queued in it; every job in that pool is reported failed, none is "
            "retried in this run. Rerun to retry them (with fewer --workers if memory ran out).",
            time.time(),
            0.0,
        )
    return fut.result()
