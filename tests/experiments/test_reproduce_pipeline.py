"""reproduce: stages run into the store, resume skips finished jobs, kill -9 loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from intertwiner.errors import DataNotFoundError
from intertwiner.experiments.base import Stage
from intertwiner.experiments.pipeline import reproduce, run_stage
from intertwiner.experiments.presets import PRESETS, build_plan
from intertwiner.runners import get_executor
from intertwiner.runners.probe import failing_probe_job
from intertwiner.store import Store

VOLATILE = ("seconds", "time", "checkpoint")  # timings and paths differ between runs; nothing else


def _comparable(store: Store) -> dict:
    return {
        r.key: (r.kind, {k: v for k, v in r.metrics.items() if not any(s in k for s in VOLATILE)})
        for r in store.rows()
    }


def _assert_same(a: dict, b: dict) -> None:
    """Equal row for row and value for value, exactly; a failure names the row and the value."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0]
        for name in a[k][1].keys() | b[k][1].keys():
            assert a[k][1].get(name) == b[k][1].get(name), (a[k][0], name)


def test_run_stores_every_stage(test_run):
    out, summary = test_run
    store = Store(out)
    by_stage = {s["stage"]: s for s in summary["stages"]}
    assert by_stage["groups"]["status"] == "done" and by_stage["zoo"]["status"] == "done"
    assert len(store.rows("group_table")) == len(PRESETS["test"]["activations"])
    zoo = store.rows("zoo")
    assert len(zoo) == PRESETS["test"]["seeds"]
    assert all(0.0 <= r.metrics["test_accuracy"] <= 1.0 for r in zoo)
    assert all((out / r.metrics["checkpoint"]).is_file() for r in zoo)
    # Every stage either ran, or says plainly why it did not.
    for s in summary["stages"]:
        assert s["status"] in ("done", "not run", "failed jobs")
        if s["status"] == "not run":
            assert any(n.startswith("not run:") for n in s["notes"])
    assert (out / "report.html").is_file()


def test_grounding_stage_ranks_the_measures_in_the_report(test_run):
    """The grounding stages: one job per zoo model (checkpoints in the run folder, reused by the
    measure jobs), one row per measure with every test's interval, and the ranked report table."""
    out, summary = test_run
    by_stage = {s["stage"]: s for s in summary["stages"]}
    assert (
        by_stage["grounding_zoo"]["status"] == "done" and by_stage["grounding"]["status"] == "done"
    )
    spec = PRESETS["test"]["grounding"][0]
    zoo = Store(out).rows("grounding_zoo")
    assert len(zoo) == spec["seeds"] + spec["random_labels"]
    assert len(list((out / "checkpoints" / "grounding").glob("*.safetensors"))) == len(zoo)
    rows = Store(out).rows("grounding")
    assert sorted(r.config["measure"] for r in rows) == sorted(spec["measures"])
    for r in rows:
        tests = r.metrics["score"]["tests"]
        assert set(tests) == {"layer_identification", "specificity", "monotonicity", "prediction"}
        for t in tests.values():
            iv = t["interval"]
            assert len(t["per_seed"]) == spec["seeds"] and iv["low"] <= iv["mean"] <= iv["high"]
        # the zoo accuracies the measure job saw are the zoo stage's
        seeds = sorted(z.metrics["test_accuracy"] for z in zoo if not z.config["random_labels"])
        assert sorted(r.metrics["test_accuracy"]) == seeds
    html = (out / "report.html").read_text()
    assert "which similarity measure to trust" in html and "mean rank" in html
    assert "99.3" in html  # Kornblith's linear CKA value beside ours


def test_grounding_report_ranks_by_mean_rank():
    from intertwiner.report.grounding import grounding_tables
    from intertwiner.store import Row

    def row(name, means):
        tests = {t: {"interval": {"mean": m, "low": m - 0.1, "high": m + 0.1, "n": 3, "sd": 0.1},
                     "per_seed": [m] * 3}
                 for t, m in zip(["layer_identification", "monotonicity"], means, strict=True)}  # fmt: skip
        cfg = {"grounding": {"zoo": "mlp", "seeds": 3, "depth": 3, "width": 8, "epochs": 1,
                             "n_inputs": 40}, "measure": name}  # fmt: skip
        return Row("k" + name, "grounding", cfg, {"score": {"name": name, "tests": tests,
                                                             "published": ""},
                                                   "test_accuracy": [0.9]}, 0.0, 0.0, "0", 0.0)  # fmt: skip

    (table,) = grounding_tables([row("a", [0.2, 0.9]), row("b", [0.9, 0.95]),
                                 row("c", [0.1, 0.1])]).values()  # fmt: skip
    assert [r["measure"] for r in table] == ["b", "a", "c"]
    assert table[0]["layer id %"] == "90.0 [80.0, 100.0]" and table[0]["mean rank"] == "1.0"


def test_rerun_redoes_nothing(test_run):
    out, _ = test_run
    before = {r.key: r.created for r in Store(out).rows()}
    again = reproduce(out, preset="test", workers=1, progress=False, report=False)
    for s in again["stages"]:
        if s["status"] != "not run":
            assert s["skipped_done"] + len(s["failed"]) == s["jobs"] and s["ran"] == 0
    assert {r.key: r.created for r in Store(out).rows()} == before


def test_failed_jobs_are_reported_not_stored(tmp_path):
    st = Stage("probe", "probe", failing_probe_job, [{"seed": s, "fail": s == 1} for s in range(3)])
    with get_executor("local", workers=1) as ex:
        status = run_stage(st, Store(tmp_path), ex, tmp_path, progress=False)
    assert status["ran"] == 2 and len(status["failed"]) == 1
    assert "probe failure requested" in status["failed"][0]["error"]
    assert len(Store(tmp_path)) == 2
    with get_executor("local", workers=1) as ex:  # the failed job is retried on the next run
        status = run_stage(st, Store(tmp_path), ex, tmp_path, progress=False)
    assert status["skipped_done"] == 2 and len(status["failed"]) == 1


def _reproduce_command(out) -> list[str]:
    """The CLI run of the test preset, as a user types it: one entry point for both runs below."""
    return [sys.executable, "-m", "intertwiner.cli", "reproduce", "--out", str(out),
            "--preset", "test", "--workers", "1", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_same_results(tmp_path):
    # The reference is built the way the killed run is (same command, so same thread settings):
    # this tests resumption and nothing else.
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    ref = subprocess.run(_reproduce_command(ref_out), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    cmd = _reproduce_command(out)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / "results.sqlite").exists():
            n = len(Store(out))
            if n >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()!r}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = Store(out)
    done_before = {r.key: r.created for r in killed.rows()}
    assert 2 <= len(done_before) < len(Store(ref_out))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stderr
    after = Store(out)
    # Nothing finished before the kill was redone, and the end state equals an uninterrupted run
    # bit for bit (same command, same threads: no tolerance).
    assert all(
        after.get(r.config).created == done_before[r.key]
        for r in killed.rows()
        if r.key in done_before
    )
    _assert_same(_comparable(after), _comparable(Store(ref_out)))
    assert (out / "report.html").is_file()


def test_presets_build_their_job_lists():
    for name in ("quick", "full"):
        plan = build_plan(name)
        assert [s.name for s in plan][:2] == ["groups", "zoo"]
        assert all(isinstance(c, dict) for s in plan for c in s.configs)
    quick_zoo = next(s for s in build_plan("quick") if s.name == "zoo")
    assert {c["arch"] for c in quick_zoo.configs} == {"mlp", "myrtle_cnn", "resnet20"}


def test_paper_preset_needs_a_real_data_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        build_plan("paper")
    with pytest.raises(DataNotFoundError):
        build_plan("paper", data_dir=str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError):
        build_plan("paper", data_dir=str(tmp_path))  # a folder without CIFAR-10 in it


def test_paper_preset_builds_its_job_list_on_a_cifar_folder(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(20)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch))  # a tiny stand-in with the real layout
    plan = {s.name: s for s in build_plan("paper", data_dir=str(tmp_path))}
    zoo = [c for c in plan["zoo"].configs if c["role"] == "zoo"]
    assert len(zoo) == 3 * 100 and {c["data"]["name"] for c in zoo} == {"cifar10"}
    assert len(plan["metrics"].configs) == 3 * 32
    per_arch = {}
    for c in plan["stitching"].configs:
        per_arch.setdefault(c["arch"], set()).add(c["site_index"])
    assert {a: len(s) for a, s in per_arch.items()} == {"myrtle_cnn": 4, "resnet20": 19,
                                                        "resnet18": 17}  # fmt: skip


def test_stage_with_missing_dependency_is_reported_not_run(tmp_path, monkeypatch):
    from intertwiner.experiments import pipeline
    from intertwiner.runners.probe import probe_job

    plan = [
        Stage("probe", "probe", probe_job, [{"seed": 0}, {"seed": 1}]),
        Stage("later", "later", probe_job, [{"seed": 2}], requires=("intertwiner.not_written",)),
    ]
    monkeypatch.setattr(pipeline, "build_plan", lambda *a, **k: plan)
    summary = reproduce(tmp_path, preset="test", workers=1, progress=False)
    status = {s["stage"]: s for s in summary["stages"]}
    assert status["probe"]["status"] == "done" and status["later"]["status"] == "not run"
    assert "intertwiner.not_written" in status["later"]["notes"][0]
    assert len(Store(tmp_path)) == 2
    assert (
        "not run: dependency unavailable (intertwiner.not_written"
        in (tmp_path / "report.html").read_text()
    )


def test_zoo_checkpoints_record_their_data_so_stitch_needs_no_data_flag(test_run):
    from typer.testing import CliRunner

    from intertwiner import checkpoints, models
    from intertwiner.cli import app

    out, _ = test_run
    paths = [out / r.metrics["checkpoint"] for r in Store(out).rows("zoo")]
    meta = checkpoints.read_metadata(paths[0])
    assert meta["dataset"] == PRESETS["test"]["data"]
    assert isinstance(meta["data_options"], dict) and "split_seed" in meta
    assert 0.0 <= meta["val_accuracy"] <= 1.0
    model, _ = checkpoints.load(paths[0])
    site = models.sites(model)[0]
    res = CliRunner().invoke(
        app, ["stitch", str(paths[0]), str(paths[-1]), "--at", site, "--epochs", "0", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "penalty" in res.output
