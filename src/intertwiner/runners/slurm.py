"""SLURM executor through submitit: one array job per stage, one task per config.

``cluster="local"`` / ``"debug"`` use submitit's local (subprocess) and debug (in-process)
executors, which run the same code path without a SLURM controller; tests use those. They must be
asked for: with ``cluster=None`` (or ``"slurm"``) and no SLURM controller on this machine, submitit
would silently fall back to running locally, so ``SlurmExecutor`` raises ``ExecutorError`` instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from intertwiner.runners.base import Executor, ExecutorError, JobFn, JobResult, execute


def slurm_available() -> bool:
    """Whether a SLURM controller can be reached from here (``sbatch`` on PATH, as submitit checks)."""
    import shutil

    return shutil.which("sbatch") is not None


class SlurmExecutor(Executor):
    """Submit every config as one task of a submitit array job and yield results as they finish.

    ``folder`` keeps submitit's logs and pickled jobs (default ``./submitit``); ``partition``,
    ``time_min``, ``gpus`` (per task), ``cpus`` (per task) and ``array_parallelism`` map to the
    matching SLURM options.
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike = "submitit",
        *,
        partition: str | None = None,
        time_min: int = 60,
        gpus: int = 0,
        cpus: int = 1,
        mem_gb: float | None = None,
        array_parallelism: int = 64,
        cluster: str | None = None,
        workers: int | None = None,
    ) -> None:
        try:
            import submitit
        except ImportError as e:  # pragma: no cover (submitit is an optional extra)
            raise ExecutorError(
                "the slurm executor needs submitit: pip install 'intertwiner[slurm]'"
            ) from e
        self.folder = Path(folder)
        if cluster not in (None, "slurm", "local", "debug"):
            raise ExecutorError(f"unknown SLURM cluster {cluster!r}; choose slurm, local or debug")
        self.cluster = cluster
        if cluster in (None, "slurm") and not slurm_available():
            raise ExecutorError(
                "--executor slurm found no SLURM cluster on this machine (no sbatch on PATH), "
                "so nothing would be submitted. Run it on a SLURM login node; or run here on "
                "purpose with --executor local, or with --slurm-cluster local to test the "
                "submitit code path locally"
            )
        try:
            self._ex = submitit.AutoExecutor(folder=str(self.folder), cluster=cluster)
        except Exception as e:  # noqa: BLE001 (submitit raises RuntimeError without sbatch)
            raise ExecutorError(
                f"submitit could not build a {cluster or 'slurm'} executor: {e}; without a SLURM "
                "controller use --executor local"
            ) from e
        if cluster in (None, "slurm") and self._ex.cluster != "slurm":  # belt and braces
            raise ExecutorError(
                f"submitit chose its {self._ex.cluster!r} executor, not slurm; pass "
                "--slurm-cluster local to run locally on purpose"
            )
        params: dict = {"timeout_min": int(time_min), "cpus_per_task": int(cpus)}
        if self._ex.cluster == "slurm":
            params["slurm_array_parallelism"] = int(workers or array_parallelism)
            if partition:
                params["slurm_partition"] = partition
            if gpus:
                params["gpus_per_node"] = int(gpus)
            if mem_gb:
                params["mem_gb"] = mem_gb
        self._ex.update_parameters(**params)
        self.params = {"partition": partition, "time_min": time_min, "gpus": gpus, "cpus": cpus}

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        import submitit

        configs = list(configs)
        if not configs:
            return
        run = functools.partial(execute, threads=self.params["cpus"])  # torch threads = CPUs
        jobs = self._ex.map_array(run, [fn] * len(configs), configs)
        by_id = {id(j): c for j, c in zip(jobs, configs)}
        for job in submitit.helpers.as_completed(jobs, poll_frequency=1):
            try:
                res = job.result()
            except Exception as e:  # noqa: BLE001 (a task killed by SLURM never reached execute)
                res = JobResult(None, f"submitit job {job.job_id} failed: {e}", 0.0, 0.0)
            yield by_id[id(job)], res

    def describe(self) -> dict:
        return {"executor": self.name, "cluster": self._ex.cluster, **self.params,
                "threads": self.params["cpus"]}  # fmt: skip
