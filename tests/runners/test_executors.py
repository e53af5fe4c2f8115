"""Every executor gives the same rows for the same jobs; failures are captured per job."""

from __future__ import annotations

import pytest

from intertwiner.experiments import group_table
from intertwiner.runners import ExecutorError, get_executor
from intertwiner.runners.probe import failing_probe_job, probe_job, thread_count_job

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
    in_process = get_executor("local", workers=1)
    assert in_process.describe()["threads"] == torch.get_num_threads()
    assert {r["threads"] for r in _values(_rows(in_process, thread_count_job)).values()} == {
        torch.get_num_threads()
    }


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
