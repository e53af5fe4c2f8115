"""Local executor: a process pool (``workers=1`` runs in-process, handy for debugging)."""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from intertwiner.runners.base import (
    Executor,
    ExecutorError,
    JobFn,
    JobResult,
    available_cores,
    execute,
)


class LocalExecutor(Executor):
    """Run jobs in a ``concurrent.futures`` process pool of ``workers`` processes.

    Workers are started with ``spawn`` (torch is not fork-safe once its thread pools exist), so the
    job function must be importable by name. ``workers=None`` uses one worker per core. Every job
    runs with ``threads_per_worker`` torch threads (default: cores / workers), in a worker or in
    this process alike: a row never depends on the thread count a caller happened to leave.
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
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        configs = list(configs)
        run = functools.partial(execute, fn, threads=self.threads)
        if self.workers == 1 or len(configs) <= 1 and self._pool is None:
            for cfg in configs:
                yield cfg, run(cfg)
            return
        pool = self._get_pool()
        # Keep at most 2 jobs per worker queued so an interrupted run has little in flight.
        pending: dict[Future, dict] = {}
        it = iter(configs)
        for cfg in it:
            pending[pool.submit(run, cfg)] = cfg
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cfg = pending.pop(fut)
                yield cfg, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(run, nxt)] = nxt

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict:
        """Workers and the torch threads each job runs with (results depend on the latter)."""
        return {"executor": self.name, "workers": self.workers, "threads": self.threads}
