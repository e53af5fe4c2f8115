"""A run folder holds one run: identity checks, the lock, leftovers, options checked up front,
run-relative paths and a movable folder (issue 18)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intertwiner.cli import app
from intertwiner.data import UnknownDatasetError
from intertwiner.errors import DataNotFoundError
from intertwiner.experiments import pipeline, presets, runfolder
from intertwiner.experiments.base import Stage, resolve_stored_path, run_relative
from intertwiner.experiments.presets import PRESETS
from intertwiner.experiments.runfolder import RunConflictError, RunLock, RunLockedError
from intertwiner.experiments.settings import Preset
from intertwiner.runners import ExecutorError
from intertwiner.runners.probe import failing_probe_job, probe_job
from intertwiner.store import DB_NAME, Store, config_key


def _probe_plan(preset, data: str | None = None, data_dir: str | None = None) -> list[Stage]:
    """A fast stand-in for a preset's stages (``build_plan`` takes a name or a typed ``Preset``):
    one probe job per seed of the preset."""
    n = (preset if isinstance(preset, Preset) else presets.get(preset)).seeds
    return [Stage("probe", "probe", probe_job, [{"seed": s} for s in range(n)])]


@pytest.fixture
def probe(monkeypatch):
    """``reproduce`` runs probe jobs instead of training (the identity checks are the real ones)."""
    monkeypatch.setattr(pipeline, "build_plan", _probe_plan)


def _run(out, **kw) -> dict:
    return pipeline.reproduce(out, preset="test", workers=1, progress=False, **kw)


def _files(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes, SQLite's own -wal/-shm aside."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


# -- one run per folder -------------------------------------------------------------------------
def test_another_configuration_is_refused_with_its_differences(probe, tmp_path, monkeypatch):
    _run(tmp_path)
    before = _files(tmp_path)
    monkeypatch.setitem(PRESETS, "test", {**PRESETS["test"], "seeds": 3})
    with pytest.raises(RunConflictError, match=r"config\.seeds: 2 -> 3") as err:
        _run(tmp_path)
    assert "--new-run" in str(err.value)
    assert _files(tmp_path) == before  # nothing ran, nothing was written


def test_another_preset_is_refused_before_anything_runs(test_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(test_run[0], out)
    before = _files(out)
    with pytest.raises(RunConflictError, match='preset: "test" -> "quick"'):
        pipeline.reproduce(out, preset="quick", workers=1, progress=False)
    assert _files(out) == before


def test_new_run_goes_beside_and_resumes_there(probe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(out)
    before = _files(out)
    monkeypatch.setitem(PRESETS, "test", {**PRESETS["test"], "seeds": 3})
    first = _run(out, new_run=True)
    assert first["out"] == str(tmp_path / "run-2") and first["rows"] == 3
    assert _files(out) == before
    again = _run(out, new_run=True)  # the same command resumes the sibling, no run-3
    assert again["out"] == first["out"] and again["stages"][0]["ran"] == 0
    assert not (tmp_path / "run-3").exists()
    meta = Store(tmp_path / "run-2").meta()
    assert meta["identity"]["config"]["seeds"] == 3 and meta["identity"]["library_version"]


def test_resuming_with_another_library_version_warns_and_keeps_the_recorded_one(
    probe, tmp_path, monkeypatch
):
    _run(tmp_path)
    created_with = Store(tmp_path).meta()["identity"]["library_version"]
    monkeypatch.setattr(runfolder, "__version__", "99.0")
    summary = _run(tmp_path)
    assert any(f"created with intertwiner {created_with}" in w for w in summary["warnings"])
    assert Store(tmp_path).meta()["identity"]["library_version"] == created_with
    res = CliRunner().invoke(app, ["reproduce", "--out", str(tmp_path), "--preset", "test", "-q"])
    assert res.exit_code == 0 and "warning: this run was created with" in res.stderr


def test_a_legacy_folder_of_another_preset_is_refused(probe, tmp_path):
    legacy = Store(tmp_path)  # written before identities: only the old "run" entry
    legacy.set_meta("run", {"preset": "quick", "preset_config": PRESETS["quick"], "data": None,
                            "data_dir": None})  # fmt: skip
    legacy.put("zoo", {"seed": 9}, {"acc": 1.0})
    with pytest.raises(RunConflictError, match='preset: "quick" -> "test"'):
        _run(tmp_path)
    assert len(Store(tmp_path)) == 1


def test_a_folder_without_identity_is_adopted_only_if_its_rows_are_this_runs_jobs(probe, tmp_path):
    ours, foreign = tmp_path / "ours", tmp_path / "foreign"
    Store(ours).put("probe", {"seed": 0}, probe_job({"seed": 0}))
    assert _run(ours)["stages"][0]["skipped_done"] == 1
    Store(foreign).put("probe", {"seed": 7}, probe_job({"seed": 7}))
    with pytest.raises(RunConflictError, match="1 stored rows are no job of this run"):
        _run(foreign)


def test_report_counts_only_this_runs_rows(probe, tmp_path):
    from intertwiner.report import render

    _run(tmp_path)
    Store(tmp_path).put("zoo", {"seed": 99, "arch": "other"}, {"acc": 0.1})  # a stray row
    html = render(tmp_path)
    assert "2 finished jobs" in html
    assert "1 stored rows are no job of this run" in html


def test_differences_are_leafwise_and_order_free():
    a = {"x": [1, 2], "y": {"z": 1, "w": (3,)}}
    assert runfolder.differences(a, {"y": {"w": [3], "z": 1}, "x": [1, 2]}) == []
    assert runfolder.differences(a, {"x": [1, 2], "y": {"z": 2}}) == [
        "y.w: [3] -> (absent)",
        "y.z: 1 -> 2",
    ]


# -- the lock -----------------------------------------------------------------------------------
_HOLDER = (
    "import sys, time\n"
    "from intertwiner.experiments.runfolder import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_second_run_is_refused_while_the_first_lives_and_runs_after_it_dies(probe, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as err:
            _run(tmp_path)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(err.value)
        assert not (tmp_path / DB_NAME).exists()  # refused before any job or store
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the stale lock of a killed process ...
        holder.wait()
    assert _run(tmp_path)["rows"] == 2  # ... is recovered by the next run
    assert not (tmp_path / runfolder.LOCK_NAME).exists()  # released and removed


def test_lock_excludes_within_one_process_and_is_released(tmp_path):
    with RunLock(tmp_path):
        info = json.loads((tmp_path / runfolder.LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # free again
        pass


def test_a_lock_taken_on_a_file_its_releaser_removed_moves_to_the_new_file(tmp_path):
    """B opened run.lock just before A released (and removed) it: B's flock succeeds on a file
    nobody else will open, so B must notice and lock the file at the path, or C could run too."""
    path = tmp_path / runfolder.LOCK_NAME
    a = RunLock(tmp_path)
    a.acquire()
    stale = os.open(path, os.O_RDWR)  # B's open, before A releases
    a.release()
    assert not path.exists()
    b = RunLock(tmp_path)
    real_open, calls = b._open, []

    def open_stale_first() -> int:
        calls.append(1)
        return stale if len(calls) == 1 else real_open()

    b._open = open_stale_first
    b.acquire()
    assert len(calls) == 2  # the stale file was locked, noticed and given up
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError):  # C finds B's lock on the file at the path
        RunLock(tmp_path).acquire()
    b.release()
    assert not path.exists()


def test_a_file_system_without_locks_is_refused_not_run_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunLockedError, match="does not support file locks"):
        RunLock(tmp_path).acquire()


def test_a_lock_file_left_by_a_dead_process_does_not_block(probe, tmp_path):
    (tmp_path / runfolder.LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 1, "host": "gone"}))
    assert _run(tmp_path)["rows"] == 2


# -- leftovers ----------------------------------------------------------------------------------
def test_leftover_temporaries_are_removed_and_nothing_else(probe, tmp_path):
    zoo = tmp_path / "checkpoints" / "zoo"
    zoo.mkdir(parents=True)
    leftovers = []
    for name in ("m.safetensors", "m.json"):  # named exactly as checkpoints.save names them
        fd, tmp = tempfile.mkstemp(dir=zoo, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        leftovers.append(Path(tmp))
    (tmp_path / "report.html.tmp").write_text("half a report")
    keep = [zoo / "notes.tmp", zoo / ".hidden.tmp", tmp_path / "mine.safetensors"]
    for p in keep:
        p.write_text("user file")
    summary = _run(tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_text() == "user file" for p in keep)
    assert sorted(summary["removed_leftovers"]) == sorted(
        [p.relative_to(tmp_path).as_posix() for p in leftovers] + ["report.html.tmp"]
    )


# -- options checked before anything runs --------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"data": "imagenet"}, UnknownDatasetError, "unknown --data 'imagenet'"),
        ({"data_dir": "/nonexistent"}, DataNotFoundError, "only read for cifar10"),
        ({"data": "cifar10"}, DataNotFoundError, "--data-dir"),
        ({"executor": "kubernetes"}, ExecutorError, "local, ray, slurm"),
        ({"workers": 0}, ExecutorError, "at least 1"),
        ({"preset": "huge"}, ValueError, "unknown preset"),
    ],
)
def test_bad_options_are_refused_before_the_folder_exists(tmp_path, options, error, message):
    out = tmp_path / "run"
    kw = {"preset": "test", "workers": 1, "progress": False, **options}
    with pytest.raises(error, match=message):
        pipeline.reproduce(out, **kw)
    assert not out.exists()


def test_a_missing_executor_package_is_refused_up_front(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a)
    )
    with pytest.raises(ExecutorError, match=r"intertwiner\[slurm\]"):
        pipeline.reproduce(tmp_path / "run", preset="test", executor="slurm", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_data_loader_failure_is_refused_up_front(tmp_path, monkeypatch):
    from intertwiner.experiments import common

    def broken(spec):
        raise ImportError("No module named 'sklearn'")

    monkeypatch.setattr(common, "load_data", broken)
    with pytest.raises(DataNotFoundError, match="sklearn"):
        pipeline.reproduce(tmp_path / "run", preset="test", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_names_the_first_failed_job(tmp_path, monkeypatch):
    def plan(preset, data=None, data_dir=None):
        cfgs = [{"seed": s, "fail": s == 1} for s in range(3)]
        return [Stage("probe", "probe", failing_probe_job, cfgs)]

    monkeypatch.setattr(pipeline, "build_plan", plan)
    res = CliRunner().invoke(
        app, ["reproduce", "--out", str(tmp_path), "--preset", "test", "--workers", "1", "-q"]
    )
    assert res.exit_code == 1
    assert "1 job(s) failed. First failure, stage probe" in res.stderr
    assert '"fail": true' in res.stderr and "probe failure requested" in res.stderr


@pytest.mark.parametrize("where", [".", "sub"], ids=["the file", "inside the file"])
def test_cli_refuses_an_out_that_is_a_file_with_one_line(probe, tmp_path, where):
    """``--out results.txt`` naming an existing file: one line, exit code 2, the file untouched."""
    existing = tmp_path / "results.txt"
    existing.write_text("my results")
    out = existing / where if where != "." else existing
    res = CliRunner().invoke(app, ["reproduce", "--out", str(out), "--preset", "test", "-q"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "choose another --out" in lines[0]
    assert "Traceback" not in res.output
    assert existing.read_text() == "my results" and sorted(os.listdir(tmp_path)) == ["results.txt"]


def test_cli_refuses_bad_data_and_a_busy_folder_with_exit_2(probe, tmp_path):
    res = CliRunner().invoke(app, ["reproduce", "--out", str(tmp_path / "a"), "--data", "imagenet"])
    assert res.exit_code == 2 and "unknown --data 'imagenet'" in res.stderr
    with RunLock(tmp_path / "b"):
        res = CliRunner().invoke(
            app, ["reproduce", "--out", str(tmp_path / "b"), "--preset", "test"]
        )
    assert res.exit_code == 2 and "another reproduce run" in res.stderr


def test_read_only_commands_refuse_a_foreign_store_and_write_nothing(tmp_path):
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    con.commit()
    con.close()
    before = _files(tmp_path)
    for args in (["results", str(tmp_path)], ["report", str(tmp_path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "not an intertwiner results store" in res.stderr
    assert _files(tmp_path) == before and sorted(os.listdir(tmp_path)) == [DB_NAME]


# -- what a finished run folder holds ----------------------------------------------------------
def _readme_files() -> list[tuple[str, bool]]:
    """(glob pattern, required) for each row of the README's table of a finished folder's files;
    CAPITALISED words are placeholders, ``...`` any path below, rows saying "only" optional."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("A finished run folder holds exactly these files")
    table = readme[readme.index("| file | what |", start) :].split("\n\n")[0]
    out = []
    for line in table.splitlines()[2:]:
        name, what = (c.strip() for c in line.strip("|").split("|", 1))
        pattern = re.sub(r"[A-Z]+", "*", name.strip("`")).replace("...", "**")
        out.append((pattern, "only" not in what))
    return out


def _matches(path: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern.replace("**", "*"))


def test_a_finished_run_folder_holds_exactly_the_files_the_readme_lists(test_run):
    folder, summary = test_run
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    listed = _readme_files()
    assert [p for p, _ in listed][:2] == ["results.sqlite", "report.html"]
    unlisted = [f for f in files if not any(_matches(f, p) for p, _ in listed)]
    assert unlisted == []  # no results.sqlite-wal/-shm, no run.lock
    missing = [p for p, required in listed if required and not any(_matches(f, p) for f in files)]
    assert missing == [] and summary["rows"] > 0


def test_a_run_ended_by_an_error_leaves_no_lock_and_no_log(probe, tmp_path, monkeypatch):
    import intertwiner.report

    def broken(folder):
        raise KeyboardInterrupt  # Ctrl-C while the report is written

    monkeypatch.setattr(intertwiner.report, "build_report", broken)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [DB_NAME]
    assert len(Store(tmp_path, readonly=True)) == 2
    assert sorted(os.listdir(tmp_path)) == [DB_NAME]  # a read-only open creates no -wal/-shm


# -- paths relative to the run folder; a moved folder reports and resumes ------------------------
def test_run_relative_and_resolve_round_trip(tmp_path):
    cfg = {"_run": str(tmp_path)}
    ckpt = tmp_path / "checkpoints" / "zoo" / "m.safetensors"
    assert run_relative(cfg, ckpt) == "checkpoints/zoo/m.safetensors"
    assert resolve_stored_path(tmp_path, run_relative(cfg, ckpt)) == ckpt
    moved = tmp_path / "moved"
    (moved / "checkpoints" / "zoo").mkdir(parents=True)
    (moved / "checkpoints" / "zoo" / "m.safetensors").write_text("x")
    # An absolute path stored by an older version, from where the folder used to be:
    assert resolve_stored_path(moved, str(ckpt)) == moved / "checkpoints/zoo/m.safetensors"
    assert resolve_stored_path(moved, "/elsewhere/file.txt") == Path("/elsewhere/file.txt")


def test_sanity_rows_store_the_checkpoint_relative_to_the_run(tmp_path):
    from intertwiner import checkpoints, models
    from intertwiner.experiments.common import zoo_checkpoint
    from intertwiner.experiments.sanity_job import sanity_job
    from intertwiner.experiments.zoo import zoo_config

    data = {"name": "synthetic", "n_train": 120, "n_test": 60, "input_size": 16, "num_classes": 4}
    zcfg = zoo_config("myrtle_cnn", "relu", 0, {"width": 2, "batchnorm": True}, {}, data, "sanity")
    model = models.build("myrtle_cnn", width=2, batchnorm=True, activation="relu", in_channels=1,
                         input_size=16, num_classes=4)  # fmt: skip
    path = zoo_checkpoint({"_run": str(tmp_path)}, zcfg)
    path.parent.mkdir(parents=True)
    checkpoints.save(model, path, {})
    row = sanity_job({"stage": "sanity", "activation": "relu", "model": zcfg, "layer": 0,
                      "group": "G_ReLU", "repeat": 0, "epochs": 0, "_run": str(tmp_path)})  # fmt: skip
    assert not Path(row["checkpoint"]).is_absolute()
    assert resolve_stored_path(tmp_path, row["checkpoint"]) == path


def test_a_moved_run_folder_reports_and_resumes(test_run, tmp_path):
    original, _ = test_run
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(original, tmp_path / "copy")
    (tmp_path / "elsewhere").mkdir()
    os.rename(tmp_path / "copy", moved)
    zoo = Store(moved).rows("zoo")
    assert all(not Path(r.metrics["checkpoint"]).is_absolute() for r in zoo)
    assert all(resolve_stored_path(moved, r.metrics["checkpoint"]).is_file() for r in zoo)
    metrics_before = {r.key: r.metrics for r in Store(moved).rows("metrics")}
    con = sqlite3.connect(moved / DB_NAME)  # forget the metrics rows: they must be redone here
    con.execute("DELETE FROM results WHERE kind = 'metrics'")
    con.commit()
    con.close()
    summary = pipeline.reproduce(moved, preset="test", workers=1, progress=False)
    ran = {s["stage"]: s.get("ran", 0) for s in summary["stages"]}
    assert ran["metrics"] == len(metrics_before) and ran["zoo"] == 0 and ran["groups"] == 0
    after = {r.key: r.metrics for r in Store(moved).rows("metrics")}
    volatile = ("seconds",)
    assert {k: {n: v for n, v in m.items() if n not in volatile} for k, m in after.items()} == {
        k: {n: v for n, v in m.items() if n not in volatile} for k, m in metrics_before.items()
    }  # recomputed from the moved checkpoints, bit for bit (same threads, same process)
    assert "Preset <b>test</b>" in (moved / "report.html").read_text()
    assert set(Store(moved).keys()) == {config_key(r.config) for r in Store(original).rows()}


# -- determinism as the README states it ---------------------------------------------------------
def _timeless(store: Store) -> dict:
    return {
        r.key: {n: v for n, v in r.metrics.items() if "seconds" not in n and "time" not in n}
        for r in store.rows()
    }


def test_same_threads_give_bit_identical_rows(tmp_path):
    runs = []
    for name in ("a", "b"):
        pipeline.reproduce(tmp_path / name, preset="test", workers=1, progress=False, report=False,
                           executor_options={"threads_per_worker": 1})  # fmt: skip
        runs.append(_timeless(Store(tmp_path / name)))
        assert Store(tmp_path / name).meta()["run"]["executor"]["threads"] == 1
    assert runs[0] == runs[1] and runs[0]  # exact equality of every number, not a tolerance
