"""Local executor: a process pool (``workers=1`` runs in-process, handy for debugging)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from intertwiner.runners.base import Executor, JobFn, JobResult, execute


def _init_worker(threads: int) -> None:
    # Several workers on few cores: one BLAS/OpenMP pool each, or they oversubscribe the CPU.
    import torch

    torch.set_num_threads(threads)


class LocalExecutor(Executor):
    """Run jobs in a ``concurrent.futures`` process pool of ``workers`` processes.

    Workers are started with ``spawn`` (torch is not fork-safe once its thread pools exist), so the
    job function must be importable by name. ``workers=None`` uses one worker per core.
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.workers = max(1, int(workers) if workers else cores)
        self.threads = threads_per_worker or max(1, cores // self.workers)
        self._threads_given = threads_per_worker is not None
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads,),
            )
        return self._pool

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        configs = list(configs)
        if self.workers == 1 or len(configs) <= 1 and self._pool is None:
            yield from self._map_here(fn, configs)
            return
        pool = self._get_pool()
        # Keep at most 2 jobs per worker queued so an interrupted run has little in flight.
        pending: dict[Future, dict] = {}
        it = iter(configs)
        for cfg in it:
            pending[pool.submit(execute, fn, cfg)] = cfg
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cfg = pending.pop(fut)
                yield cfg, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(execute, fn, nxt)] = nxt

    def _job_threads(self) -> int | None:
        """Torch threads per job; None: this process's own count (``workers=1``, not given)."""
        return None if self.workers == 1 and not self._threads_given else self.threads

    def _map_here(self, fn: JobFn, configs: list[dict]) -> Iterator[tuple[dict, JobResult]]:
        """Run in this process with the threads a worker would use (results depend on them)."""
        import torch

        before = torch.get_num_threads()
        if self._job_threads():
            torch.set_num_threads(self.threads)
        try:
            for cfg in configs:
                yield cfg, execute(fn, cfg)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict:
        """Workers and the torch threads each job runs with (results depend on the latter)."""
        import torch

        threads = self._job_threads() or torch.get_num_threads()
        return {"executor": self.name, "workers": self.workers, "threads": threads}
