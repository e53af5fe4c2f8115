"""Tiny deterministic job functions to check that an executor works end to end.

They live in the library (not the tests) because Ray and submitit workers must import a job
function by name in a fresh process. ``python -c "from intertwiner.runners import get_executor;
from intertwiner.runners.probe import probe_job; ..."`` is a quick cluster smoke test.
"""

from __future__ import annotations

import os


def probe_job(config: dict) -> dict:
    """Seeded torch computation: the same ``config["seed"]`` gives the same numbers anywhere."""
    import torch

    g = torch.Generator().manual_seed(int(config["seed"]))
    x = torch.randn(8, generator=g, dtype=torch.float64)
    return {"seed": config["seed"], "sq": int(config["seed"]) ** 2, "sum": float(x.sum())}


def failing_probe_job(config: dict) -> dict:
    """Fails for ``config["fail"] == True``: checks that failures come back as JobResult errors.
    With ``config["counter"]`` (a file path) every attempt is counted there, one byte each."""
    if config.get("counter"):
        _attempts(config["counter"])
    if config.get("fail"):
        raise ValueError(f"probe failure requested (pid {os.getpid()})")
    return {"ok": config["seed"]}


def thread_count_job(config: dict) -> dict:
    """The torch thread count the job runs with (results depend on it; see LocalExecutor)."""
    import torch

    return {"seed": config["seed"], "threads": torch.get_num_threads()}


def global_rng_job(config: dict) -> dict:
    """Draws from the global torch, numpy and ``random`` RNGs, as careless model code does: the
    executor's job environment must make these draws a function of the config."""
    import random

    import numpy as np
    import torch

    return {
        "seed": config["seed"],
        "torch": float(torch.rand(()).item()),
        "numpy": float(np.random.random()),  # noqa: NPY002 (the point of this probe)
        "random": random.random(),
    }


# -- fault injection: jobs whose process dies, for the executors' fault tests ----------------------
def _attempts(counter: str | os.PathLike) -> int:
    """Count one more attempt in the file ``counter`` (one byte per attempt, appended with
    O_APPEND so that concurrent attempts never lose a count); returns the attempts before it."""
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        os.write(fd, b".")
        os.fsync(fd)
    finally:
        os.close(fd)
    return before


def crash_probe_job(config: dict) -> dict:
    """``probe_job``, but on its first ``config["crashes"]`` attempts (counted in the file
    ``config["counter"]``) the process running it kills itself with SIGKILL, as the OOM killer or
    a lost node would: the executor sees a worker die in the middle of a job. ``config["sleep"]``
    seconds of sleep first keep a job in flight long enough to kill its driver."""
    import signal
    import time

    time.sleep(float(config.get("sleep", 0.0)))
    crashes = int(config.get("crashes", 0))
    if crashes and _attempts(config["counter"]) < crashes:
        os.kill(os.getpid(), signal.SIGKILL)
    return probe_job(config)


class KillingOptions(dict):
    """Options of a metric (a dict) that kill, with SIGKILL, any process but the one that made
    them the first time an option is read there: a ``pairwise(workers=...)`` worker dies in the
    middle of its first pair. ``stamp``: a file where the dying process writes the time of death.
    """

    def __init__(self, *args: object, stamp: str | os.PathLike | None = None, **kw: object):
        super().__init__(*args, **kw)
        self.owner, self.stamp = os.getpid(), stamp  # pickled with the dict (its __dict__)

    def get(self, key: object, default: object = None) -> object:
        if os.getpid() != self.owner:
            import signal
            import time

            if self.stamp is not None:
                with open(self.stamp, "a") as fh:
                    fh.write(f"{time.time()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().get(key, default)
