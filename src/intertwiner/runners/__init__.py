"""Executors that run experiment jobs: ``local`` (process pool), ``ray``, ``slurm`` (submitit).

``get_executor(name, **opts)`` builds one; each has ``map(fn, configs)`` yielding
``(config, JobResult)`` as jobs finish, and ``close()``.
"""

from __future__ import annotations

from intertwiner.runners.base import Executor, ExecutorError, JobResult, execute
from intertwiner.runners.local import LocalExecutor

EXECUTORS = ("local", "ray", "slurm")


def get_executor(name: str = "local", **opts) -> Executor:
    """Build the executor ``name`` with its options (``workers``, ``address``, ``partition``, ...)."""
    if name == "local":
        return LocalExecutor(**opts)
    if name == "ray":
        from intertwiner.runners.ray import RayExecutor

        return RayExecutor(**opts)
    if name == "slurm":
        from intertwiner.runners.slurm import SlurmExecutor

        return SlurmExecutor(**opts)
    raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "JobResult",
    "LocalExecutor",
    "execute",
    "get_executor",
]
