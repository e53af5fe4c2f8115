"""SIGKILL of the driver while Ray jobs run (issue 27): the store stays sound, a rerun completes,
and no Ray process is left behind.

The driver is a subprocess running ``reproduce --executor ray``, which starts its own local Ray
(2 CPUs). Its processes, and Ray's (raylet, GCS, workers), inherit a marker in their environment,
so the test finds exactly them in /proc, whatever else runs on the machine. A file of its own
(not test_faults.py), so that no other Ray instance of this test process runs at the same time.
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
summary = pipeline.reproduce(sys.argv[1], preset="test", executor="ray", workers=2,
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
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")[:80]
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


def test_driver_killed_while_ray_jobs_run_leaves_a_sound_store_and_no_orphans(tmp_path):
    pytest.importorskip("ray")
    out, mark = tmp_path / "run", uuid.uuid4().hex
    env = {**os.environ, "INTERTWINER_TEST_MARK": mark, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), "1.5", str(JOBS)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while _rows_stored(out / DB_NAME) == 0 and driver.poll() is None:
            assert time.monotonic() < deadline, "no row after 180 s"
            time.sleep(0.2)
        at_kill = _rows_stored(out / DB_NAME)
        ray_procs = [cmd for pid, cmd in _marked(mark) if pid != driver.pid]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert 0 < at_kill < JOBS  # killed while jobs were still running
    assert any("raylet" in c or "gcs_server" in c for c in ray_procs), ray_procs
    assert _integrity(out / DB_NAME) == "ok"

    rerun = subprocess.run([sys.executable, "-c", DRIVER, str(out), "1.5", str(JOBS)], env=env,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"rows {JOBS} failed False" in rerun.stdout
    assert _integrity(out / DB_NAME) == "ok"
    rows = Store(out, readonly=True).rows()
    assert sorted(r.config["seed"] for r in rows) == list(range(JOBS))  # none lost or twice
    assert _gone(mark, within=30) == []  # neither the killed run's Ray nor the rerun's
    assert sorted(p.name for p in out.iterdir()) == [DB_NAME]  # finished: no lock, no WAL
