"""Every executor gives the same rows for the same jobs; failures are captured per job."""

from __future__ import annotations

import pytest

from intertwiner.experiments import group_table
from intertwiner.runners import ExecutorError, get_executor
from intertwiner.runners.probe import (
    failing_probe_job,
    global_rng_job,
    probe_job,
    thread_count_job,
)

CONFIGS = [{"seed": s} for s in range(5)]


def _rows(ex, fn=probe_job, configs=CONFIGS):
    with ex:
        out = {c["seed"]: r for c, r in ex.map(fn, configs)}
    return out


def _values(rows):
    assert all(r.ok for r in rows.values()), [r.error for r in rows.values()]
    return {k: r.value for k, r in rows.items()}


@pytest.fixture(scope="module")
def reference():
    return _values(_rows(get_executor("local", workers=1)))


def test_local_in_process(reference):
    assert sorted(reference) == list(range(5))
    assert reference[3]["sq"] == 9


def test_local_pool_matches(reference):
    assert _values(_rows(get_executor("local", workers=2))) == reference


def test_failures_are_captured_not_raised():
    cfgs = [{"seed": s, "fail": s == 1} for s in range(3)]
    rows = _rows(get_executor("local", workers=2), failing_probe_job, cfgs)
    assert rows[0].ok and rows[2].ok and not rows[1].ok
    assert "probe failure requested" in rows[1].error and rows[1].value is None


def test_slurm_via_submitit_local_executors(reference, tmp_path):
    pytest.importorskip("submitit")  # the [slurm] extra
    # "debug" runs in-process, "local" in subprocesses (slower: two jobs are enough there).
    for cluster, configs in (("debug", CONFIGS), ("local", CONFIGS[:2])):
        ex = get_executor("slurm", folder=tmp_path / cluster, cluster=cluster, time_min=5)
        assert ex.describe()["cluster"] == cluster
        got = _values(_rows(ex, configs=configs))
        assert got == {c["seed"]: reference[c["seed"]] for c in configs}


def test_ray_local_cluster(reference):
    pytest.importorskip("ray")
    ex = get_executor("ray", workers=2)
    with ex:
        assert _values({c["seed"]: r for c, r in ex.map(probe_job, CONFIGS)}) == reference
        # A real stage's job function gives the same rows on Ray as in-process.
        stage = group_table.stage(["relu", "tanh"], trials=2)
        on_ray = {c["activation"]: r.value for c, r in ex.map(stage.fn, stage.configs)}
    here = {c["activation"]: stage.fn(c) for c in stage.configs}
    assert on_ray == here


def test_unknown_executor():
    with pytest.raises(ExecutorError, match="local, ray, slurm"):
        get_executor("kubernetes")


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_with_the_thread_count_that_describe_reports(workers):
    import torch

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # differs from this process's count, so the test can fail
    ex = get_executor("local", workers=workers, threads_per_worker=want)
    rows = _values(_rows(ex, thread_count_job, CONFIGS[:3]))
    assert {r["threads"] for r in rows.values()} == {ex.describe()["threads"]} == {want}
    assert torch.get_num_threads() == before  # running in-process restores this process's count


def test_in_process_jobs_do_not_inherit_the_callers_thread_count():
    """``workers=1`` runs jobs with cores / 1 threads whatever this process was left with."""
    import torch

    from intertwiner.runners.base import available_cores

    before = torch.get_num_threads()
    try:
        for left_behind in (1, 3):
            torch.set_num_threads(left_behind)
            ex = get_executor("local", workers=1)
            rows = _values(_rows(ex, thread_count_job, CONFIGS[:2]))
            assert {r["threads"] for r in rows.values()} == {available_cores()}
            assert ex.describe()["threads"] == available_cores()
            assert torch.get_num_threads() == left_behind
    finally:
        torch.set_num_threads(before)


def test_global_rng_draws_depend_on_the_config_only():
    """A job drawing from the global RNGs gets a stream of its own config, in any process state,
    and leaves the caller's RNG states as they were."""
    import random

    import numpy as np
    import torch

    def run(configs):
        return _values(_rows(get_executor("local", workers=1), global_rng_job, configs))

    first = run(CONFIGS[:3])
    torch.manual_seed(123)
    np.random.seed(7)  # noqa: NPY002 (the legacy global state is what the job must not see)
    random.seed(9)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    again = run(list(reversed(CONFIGS[:3])))
    assert again == first
    assert first[0] != first[1]  # different configs, different streams
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert random.getstate() == states[2]
    pool = _values(_rows(get_executor("local", workers=2), global_rng_job, CONFIGS[:3]))
    assert pool == first  # a fresh worker process draws the same


def test_thread_count_below_one_is_refused():
    with pytest.raises(ExecutorError, match="at least 1"):
        get_executor("local", workers=1, threads_per_worker=0)


def test_slurm_without_a_cluster_refuses_instead_of_running_locally(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from intertwiner.cli import app
    from intertwiner.runners import slurm

    monkeypatch.setattr(slurm, "slurm_available", lambda: False)
    with pytest.raises(ExecutorError, match="no SLURM cluster.*--executor local"):
        get_executor("slurm", folder=tmp_path / "s")
    with pytest.raises(ExecutorError, match="unknown SLURM cluster"):
        get_executor("slurm", folder=tmp_path / "s", cluster="pbs")
    # asked for explicitly, the local submitit path still works
    ex = get_executor("slurm", folder=tmp_path / "d", cluster="debug", time_min=5)
    assert ex.describe()["cluster"] == "debug"
    res = CliRunner().invoke(
        app, ["reproduce", "--out", str(tmp_path / "run"), "--preset", "test",
              "--executor", "slurm", "-q"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "no SLURM cluster" in res.output
    assert not (tmp_path / "run" / "report.html").exists()
    res = CliRunner().invoke(
        app, ["reproduce", "--out", str(tmp_path / "run"), "--slurm-cluster", "local", "-q"]
    )
    assert res.exit_code == 2 and "goes with --executor slurm" in res.output
