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
    """Fails for ``config["fail"] == True``: checks that failures come back as JobResult errors."""
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
