"""Ray executor: an existing cluster by ``address`` or a local one started here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from intertwiner.runners.base import Executor, ExecutorError, JobFn, JobResult, execute


class RayExecutor(Executor):
    """Run each job as a Ray task (``num_cpus``/``num_gpus`` per task), with as many torch
    threads as the CPUs it reserves.

    ``address=None`` starts a local Ray instance with ``workers`` CPUs (or joins one already
    initialised in this process); ``address="auto"`` or ``"ray://host:10001"`` joins a cluster.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_job: float = 1.0,
        gpus_per_job: float = 0.0,
    ) -> None:
        try:
            import ray
        except ImportError as e:  # pragma: no cover (ray is an optional extra)
            raise ExecutorError("the ray executor needs Ray: pip install 'intertwiner[ray]'") from e
        self._ray = ray
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
        self._remote = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job)(execute)

    def map(self, fn: JobFn, configs: Sequence[dict]) -> Iterator[tuple[dict, JobResult]]:
        ray = self._ray
        refs = {self._remote.remote(fn, cfg, self.threads): cfg for cfg in configs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)

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
        }
