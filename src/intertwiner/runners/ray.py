"""Ray executor: an existing cluster by ``address`` or a local one started here.

Faults: a job whose worker process dies (killed, out of memory, its node lost) is retried by Ray
``max_retries`` times (default 2: three attempts in all), then comes back as a failed
``JobResult`` naming Ray's reason, so the run goes on and a rerun retries it. Exceptions raised by
the job itself are never retried: ``execute`` returns them as failed results on the first attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from intertwiner.runners.base import Executor, ExecutorError, JobFn, JobResult, execute


class RayExecutor(Executor):
    """Run each job as a Ray task (``num_cpus``/``num_gpus`` per task), with as many torch
    threads as the CPUs it reserves.

    ``address=None`` starts a local Ray instance with ``workers`` CPUs (or joins one already
    initialised in this process); ``address="auto"`` or ``"ray://host:10001"`` joins a cluster.
    ``max_retries``: attempts after the first when a job's worker dies (see the module docstring).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_job: float = 1.0,
        gpus_per_job: float = 0.0,
        max_retries: int = 2,
    ) -> None:
        try:
            import ray
        except ImportError as e:  # pragma: no cover (ray is an optional extra)
            raise ExecutorError("the ray executor needs Ray: pip install 'intertwiner[ray]'") from e
        if int(max_retries) < 0:
            raise ExecutorError(f"max_retries must be at least 0, got {max_retries}")
        self._ray = ray
        self.max_retries = int(max_retries)
        self.address = address
        self.cpus_per_job = cpus_per_job
        self.gpus_per_job = gpus_per_job
        self.threads = max(1, int(cpus_per_job))
        self._started_here = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                    self._started_here = True
            except Exception as e:  # noqa: BLE001 (ray raises many types; say what to do)
                raise ExecutorError(
                    f"could not start/join Ray (address={address!r}): {e}; check the address or "
                    "`ray status`"
                ) from e
        # Bounded on purpose (Ray's default is 3): retry_exceptions=False keeps a job's own
        # exceptions from being retried; only a dead worker (a system failure) is.
        self._remote = ray.remote(
            num_cpus=cpus_per_job,
            num_gpus=gpus_per_job,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )(execute)

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        ray = self._ray
        refs = {self._remote.remote(fn, cfg, self.threads): cfg for cfg in configs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], self._result(ref)

    def _result(self, ref) -> JobResult:
        """The job's result, or a failed one naming Ray's reason when the task itself failed
        (its worker died on every attempt, its node was lost, it was cancelled)."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            return JobResult(
                None,
                f"ray task failed ({type(e).__name__}: {reason}); a job whose worker dies is "
                f"retried {self.max_retries} times, then reported here. Rerun to retry it.",
                time.time(),
                0.0,
            )

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()
            self._started_here = False

    def describe(self) -> dict:
        res = self._ray.cluster_resources() if self._ray.is_initialized() else {}
        return {
            "executor": self.name,
            "address": self.address,
            "cluster_cpus": res.get("CPU"),
            "cluster_gpus": res.get("GPU"),
            "threads": self.threads,
            "max_retries": self.max_retries,
        }
