"""SIGKILL of the driver while its jobs run (issue 27), on the local executor and on Ray: the
store stays sound, a rerun completes, and no worker (nor Ray process) is left behind.

The driver is a subprocess running ``reproduce`` with 2 workers (Ray: a local instance of 2
CPUs that the driver starts). Its processes, its pool workers and Ray's (raylet, GCS, workers)
inherit a marker in their environment, so the test finds exactly them in /proc, whatever else
runs on the machine. A file of its own (not test_faults.py), so that no other Ray instance of this
test process runs at the same time.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from intertwiner.store import DB_NAME, Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes in /proc"),
]

JOBS = 6
DRIVER = """
import sys
from intertwiner.experiments import pipeline
from intertwiner.experiments.base import Stage
from intertwiner.runners.probe import crash_probe_job

configs = [{"seed": s, "sleep": float(sys.argv[2])} for s in range(int(sys.argv[3]))]
pipeline.build_plan = lambda *a, **k: [Stage("probe", "probe", crash_probe_job, configs)]
summary = pipeline.reproduce(sys.argv[1], preset="test", executor=sys.argv[4], workers=2,
                             progress=False, report=False)
print("rows", summary["rows"], "failed", summary["first_failure"] is not None)
"""


def _marked(mark: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose environment holds ``mark``: (pid, command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            # The whole command line: where the interpreter lives (the clone's path) decides how
            # far in "spawn_main" or "raylet" stands, so any cut would make the test path-dependent.
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if mark.encode() in env and state != "Z":
            found.append((int(entry), cmd.decode(errors="replace")))
    return found


def _rows_stored(db: Path) -> int:
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _gone(mark: str, within: float) -> list[tuple[int, str]]:
    """The marked processes still alive after waiting up to ``within`` seconds for them to go."""
    deadline = time.monotonic() + within
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def mark():
    """A marker for the environment of the processes a test starts; whatever of them is still
    alive afterwards (the test failed) is killed, so that no run of the suite leaves orphans."""
    mark = uuid.uuid4().hex
    yield mark
    for pid, _ in _marked(mark):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_driver_killed_while_jobs_run_leaves_a_sound_store_and_no_orphans(tmp_path, executor, mark):
    if executor == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "run"
    env = {**os.environ, "INTERTWINER_TEST_MARK": mark, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", DRIVER, str(out), "1.5", str(JOBS), executor]
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while _rows_stored(out / DB_NAME) == 0 and driver.poll() is None:
            assert time.monotonic() < deadline, "no row after 180 s"
            time.sleep(0.2)
        at_kill = _rows_stored(out / DB_NAME)
        workers = [cmd for pid, cmd in _marked(mark) if pid != driver.pid]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert 0 < at_kill < JOBS  # killed while jobs were still running
    kind = "raylet" if executor == "ray" else "spawn_main"  # Ray's node, or a pool worker
    assert any(kind in c for c in workers), workers
    assert _integrity(out / DB_NAME) == "ok"

    # The killed driver's workers go with it: ours watch their parent every 0.5 s; Ray's node
    # shuts itself down (2 s here), its agents later if the kill came while they were starting
    # (11 s measured; more under heavy load, hence the long bound).
    t0 = time.monotonic()
    assert _gone(mark, within=150) == []
    print(
        f"{executor}: the killed driver's processes were gone {time.monotonic() - t0:.1f} s after"
    )
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"rows {JOBS} failed False" in rerun.stdout
    assert _integrity(out / DB_NAME) == "ok"
    rows = Store(out, readonly=True).rows()
    assert sorted(r.config["seed"] for r in rows) == list(range(JOBS))  # none lost or twice
    assert _gone(mark, within=30) == []  # ... and the rerun's when it finished
    assert sorted(p.name for p in out.iterdir()) == [DB_NAME]  # finished: no lock, no WAL
