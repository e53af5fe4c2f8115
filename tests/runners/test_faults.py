"""Fault injection for the executors (issue 27): workers that die mid-job, jobs that always raise.

Runs go through ``pipeline.reproduce`` with a plan of probe jobs (``runners.probe``: workers import
job functions by name), so rows reach the real results store. The promise under test is the
local executor's: nothing lost, nothing duplicated; a failed job is recorded with its reason and
done by the next run. Ray runs on a local cluster of 2 CPUs started here, never a remote one;
SLURM through submitit's ``local`` executor (subprocesses, no controller).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from intertwiner.experiments import pipeline
from intertwiner.experiments.base import Stage
from intertwiner.runners.probe import crash_probe_job, failing_probe_job
from intertwiner.store import Store

pytestmark = pytest.mark.timeout(300)  # a hang is a failure, not a stalled suite


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for this module; the executor joins it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _run(out: Path, fn, configs: list[dict], executor: str, monkeypatch) -> dict:
    """``reproduce`` into ``out`` with one stage of ``fn`` over ``configs`` (no report)."""
    monkeypatch.setattr(
        pipeline, "build_plan", lambda *a, **k: [Stage("probe", "probe", fn, configs)]
    )
    options = {"cluster": "local", "time_min": 5} if executor == "slurm" else None
    return pipeline.reproduce(out, preset="test", executor=executor, workers=2, progress=False,
                              report=False, executor_options=options)  # fmt: skip


def _rows(out: Path) -> dict[int, dict]:
    """Rows by seed; fails on two rows of one job (the key is the config's hash)."""
    rows = Store(out, readonly=True).rows()
    seeds = [r.config["seed"] for r in rows]
    assert len(seeds) == len(set(seeds)), f"duplicated rows: {sorted(seeds)}"
    return {r.config["seed"]: r.metrics for r in rows}


def _attempts(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _failed(summary: dict) -> list[dict]:
    return [f for st in summary["stages"] for f in st.get("failed", [])]


@pytest.mark.slow
def test_ray_worker_killed_mid_job_is_retried_bounded_and_a_rerun_loses_nothing(
    ray_cluster, tmp_path, monkeypatch
):
    """SIGKILL of the worker process running a job. Seed 1's worker dies once: Ray retries it
    and the row comes in the same run. Seed 3's worker dies on all 1 + max_retries attempts:
    recorded as failed with Ray's reason, the run finishes, the rerun adds its row. Against a
    clean run: the same rows, none lost, none duplicated."""
    from intertwiner.runners.ray import RayExecutor

    tries = 1 + RayExecutor(workers=2).max_retries  # joins the module's cluster
    assert tries == 3  # the documented bound
    crashes = {1: 1, 3: tries}
    counters = {s: tmp_path / f"attempts-{s}" for s in range(5)}
    configs = [{"seed": s, "crashes": crashes.get(s, 0), "counter": str(counters[s])}
               for s in range(5)]  # fmt: skip
    for s, n in crashes.items():  # a clean run: every crash used up beforehand
        counters[s].write_bytes(b"." * n)
    clean = _run(tmp_path / "clean", crash_probe_job, configs, "ray", monkeypatch)
    assert clean["first_failure"] is None and clean["rows"] == 5
    for c in counters.values():
        c.unlink(missing_ok=True)

    first = _run(tmp_path / "run", crash_probe_job, configs, "ray", monkeypatch)
    assert _attempts(counters[1]) == 2  # died once, retried, done
    assert _attempts(counters[3]) == tries  # bounded: died on every attempt, then given up
    assert [f["config"]["seed"] for f in _failed(first)] == [3]
    assert "WorkerCrashedError" in first["first_failure"]["error"]
    assert "Rerun" in first["first_failure"]["error"]
    assert sorted(_rows(tmp_path / "run")) == [0, 1, 2, 4]

    again = _run(tmp_path / "run", crash_probe_job, configs, "ray", monkeypatch)
    assert again["first_failure"] is None and again["stages"][0]["ran"] == 1
    assert _rows(tmp_path / "run") == _rows(tmp_path / "clean")  # 0 lost, 0 duplicated
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.sqlite"]


@pytest.mark.slow
def test_local_worker_killed_mid_job_is_recorded_and_a_rerun_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL of a local pool worker running seed 1: the pool breaks; the jobs it held are
    recorded as failed with the reason, the others run in a new pool, the run finishes, and
    the rerun completes the rows of a clean run, none duplicated."""
    counters = {s: tmp_path / f"attempts-{s}" for s in range(6)}
    configs = [{"seed": s, "crashes": int(s == 1), "counter": str(counters[s])} for s in range(6)]
    counters[1].write_bytes(b".")  # a clean run: the crash used up beforehand
    clean = _run(tmp_path / "clean", crash_probe_job, configs, "local", monkeypatch)
    assert clean["first_failure"] is None and clean["rows"] == 6
    for c in counters.values():
        c.unlink(missing_ok=True)

    first = _run(tmp_path / "run", crash_probe_job, configs, "local", monkeypatch)
    failed = sorted(f["config"]["seed"] for f in _failed(first))
    assert 1 in failed and len(failed) <= 4  # at most the 2 x 2 jobs the broken pool held
    assert "worker process of the local pool died" in first["first_failure"]["error"]
    assert sorted(_rows(tmp_path / "run")) == sorted(set(range(6)) - set(failed))

    again = _run(tmp_path / "run", crash_probe_job, configs, "local", monkeypatch)
    assert again["first_failure"] is None and again["stages"][0]["ran"] == len(failed)
    assert _rows(tmp_path / "run") == _rows(tmp_path / "clean")  # 0 lost, 0 duplicated
    assert _attempts(counters[1]) == 2


@pytest.mark.slow
def test_submitit_task_killed_mid_job_is_recorded_and_a_rerun_completes(tmp_path, monkeypatch):
    """SIGKILL of the process running a submitit task: recorded as failed with submitit's
    reason (no retry in the run), the other row stored, the rerun adds the missing one."""
    pytest.importorskip("submitit")
    counter = tmp_path / "attempts"
    configs = [{"seed": s, "crashes": int(s == 1), "counter": str(counter)} for s in (0, 1)]
    configs[0]["counter"] = str(tmp_path / "attempts-0")
    first = _run(tmp_path / "run", crash_probe_job, configs, "slurm", monkeypatch)
    assert [f["config"]["seed"] for f in _failed(first)] == [1]
    assert "has not produced any output" in first["first_failure"]["error"]
    assert sorted(_rows(tmp_path / "run")) == [0] and _attempts(counter) == 1
    again = _run(tmp_path / "run", crash_probe_job, configs, "slurm", monkeypatch)
    assert again["first_failure"] is None and sorted(_rows(tmp_path / "run")) == [0, 1]


@pytest.mark.parametrize(
    "executor", ["ray", pytest.param("slurm", marks=pytest.mark.slow)], ids=["ray", "submitit"]
)
def test_a_job_that_raises_on_every_try_is_recorded_once_and_the_others_rows_are_intact(
    executor, tmp_path, monkeypatch, request
):
    """A job raising on every attempt is tried once per run (Ray does not retry a job's own
    exceptions), recorded once with its error, never stored; the other jobs' rows are."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    else:
        pytest.importorskip("submitit")
    counter = tmp_path / "attempts"
    configs = [{"seed": s, "fail": s == 1, "counter": str(counter) if s == 1 else None}
               for s in range(3)]  # fmt: skip
    for run in (1, 2):
        summary = _run(tmp_path / "run", failing_probe_job, configs, executor, monkeypatch)
        failed = _failed(summary)
        assert [f["config"]["seed"] for f in failed] == [1]
        assert "probe failure requested" in failed[0]["error"]
        stored = Store(tmp_path / "run", readonly=True).meta()["stages"][0]["failed"]
        assert [f["config"]["seed"] for f in stored] == [1]  # the run's record: once
        assert _attempts(counter) == run  # one attempt per run, no retries
        assert _rows(tmp_path / "run") == {0: {"ok": 0}, 2: {"ok": 2}}
        assert summary["stages"][0]["skipped_done"] == (0 if run == 1 else 2)
