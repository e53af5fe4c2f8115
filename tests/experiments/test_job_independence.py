"""A job's row depends on its config and thread count alone, never on the process that ran it.

One job of every stage runs three ways: in the run itself (after the jobs before it, in the test
process), each in a fresh process of its own, and again in this process after it was left with
another thread count and disturbed global RNGs. The rows must agree bit for bit.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import shutil

import numpy as np
import pytest
import torch

from intertwiner.experiments import pipeline, presets
from intertwiner.runners import get_executor
from intertwiner.runners.base import execute
from intertwiner.store import Store, canonical_json, config_key

VOLATILE = ("seconds", "time", "checkpoint")  # timings and paths differ between runs; nothing else


def _row(metrics: dict) -> str:
    """The row as the store keeps it, volatile keys left out, as exact canonical JSON."""
    return canonical_json({k: v for k, v in metrics.items() if not any(s in k for s in VOLATILE)})


def _every_stage_preset() -> dict:
    """The quick preset cut to seconds, one architecture with BatchNorm: every stage there is."""
    small = presets.shrink(presets.PRESETS["quick"])
    small["archs"] = {"myrtle_cnn": small["archs"]["myrtle_cnn"]}
    return small


def _in_fresh_processes(jobs: list[tuple], threads: int) -> list:
    """``execute(fn, config, threads)`` for each job, each in a newly spawned process."""
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        return pool.starmap(execute, [(fn, cfg, threads) for fn, cfg in jobs], chunksize=1)


def _disturb_process(threads: int) -> None:
    """Leave this process as a busy one would: another thread count, advanced global RNGs."""
    torch.set_num_threads(threads)
    torch.manual_seed(987)
    torch.rand(1000)
    np.random.seed(654)  # noqa: NPY002 (the legacy global state a careless job would read)
    random.seed(321)


@pytest.mark.slow
def test_every_stages_rows_are_independent_of_process_history(tmp_path, monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "every_stage", _every_stage_preset())
    run = tmp_path / "run"
    threads = get_executor("local", workers=1).describe()["threads"]  # cores / 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # what another test might leave behind
        summary = pipeline.reproduce(run, preset="every_stage", workers=1, progress=False,
                                     report=False)  # fmt: skip
        assert summary["first_failure"] is None, summary["first_failure"]
        plan = pipeline.build_plan("every_stage")
        assert {s.name for s in plan} >= {"groups", "zoo", "metrics", "stitching", "sanity",
                                          "absorb", "dissection", "alignment"}  # fmt: skip
        stored = Store(run)
        # The last job of each stage: in the run, the most jobs ran before it in this process.
        jobs = [(st.fn, st.configs[-1]) for st in plan]
        expected = [_row(stored.get(cfg).metrics) for _, cfg in jobs]

        fresh_run, busy_run = tmp_path / "fresh", tmp_path / "busy"
        shutil.copytree(run, fresh_run)  # zoo jobs write their checkpoint: each way its own copy
        shutil.copytree(run, busy_run)
        fresh = _in_fresh_processes(
            [(fn, {**c, "_run": str(fresh_run)}) for fn, c in jobs], threads
        )
        _disturb_process(3 if threads != 3 else 1)
        with get_executor("local", workers=1) as ex:  # the path a resumed run takes
            busy = [next(iter(ex.map(fn, [{**c, "_run": str(busy_run)}])))[1] for fn, c in jobs]
    finally:
        torch.set_num_threads(before)
    for (_fn, cfg), want, f, b in zip(jobs, expected, fresh, busy):
        assert f.ok and b.ok, (f.error, b.error)
        name = f"{cfg['stage']} job {config_key(cfg)[:10]}"
        assert _row(f.value) == want, f"{name}: a fresh process gives another row"
        assert _row(b.value) == want, f"{name}: a disturbed process gives another row"
