"""``reproduce``: run every stage of a preset through an executor into the run's results store.

Resumable by construction: a job whose config key is already in the store is skipped, and a job's
row is written only once it has finished, so killing the run at any moment loses at most the jobs
in flight. Stages run in order (later stages read the zoo's checkpoints).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from intertwiner._version import __version__
from intertwiner.experiments.base import Stage, stored_config
from intertwiner.experiments.presets import PRESETS, build_plan
from intertwiner.runners import get_executor
from intertwiner.store import Store, config_key


def versions() -> dict:
    """Library and platform versions for the provenance section."""
    import numpy
    import scipy
    import torch

    return {
        "intertwiner": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _error_tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_stage(
    stage: Stage, store: Store, executor: Any, out: Path, bar: Any = None, progress: bool = True
) -> dict:
    """Run the unfinished jobs of one stage; returns a status dict for the report."""
    from tqdm.auto import tqdm

    done_keys = store.keys()
    configs = [stored_config(c) for c in stage.configs]
    todo = [c for c in configs if config_key(c) not in done_keys]
    status = {
        "stage": stage.name,
        "kind": stage.kind,
        "description": stage.description,
        "jobs": len(configs),
        "skipped_done": len(configs) - len(todo),
        "ran": 0,
        "failed": [],
        "notes": list(stage.notes),
    }
    if bar is not None:
        bar.update(status["skipped_done"])
    if not todo:
        status["status"] = "done"
        return status
    t0 = time.perf_counter()
    runnable = [{**c, "_run": str(out)} for c in todo]
    with tqdm(
        total=len(configs),
        initial=status["skipped_done"],
        desc=f"{stage.name:>10}",
        disable=not progress,
        leave=False,
    ) as sbar:
        for cfg, res in executor.map(stage.fn, runnable):
            clean = stored_config(cfg)
            if res.ok:
                store.put(stage.kind, clean, res.value, started=res.started, seconds=res.seconds)
                status["ran"] += 1
            else:
                status["failed"].append({"config": clean, "error": _error_tail(res.error or "")})
            sbar.update(1)
            if bar is not None:
                bar.update(1)
    status["seconds"] = time.perf_counter() - t0
    status["status"] = "failed jobs" if status["failed"] else "done"
    return status


def reproduce(
    out: str | os.PathLike,
    preset: str = "quick",
    data: str | None = None,
    data_dir: str | None = None,
    executor: str = "local",
    workers: int | None = None,
    progress: bool = True,
    executor_options: dict | None = None,
    report: bool = True,
) -> dict:
    """Run (or resume) the experiments of ``preset`` into ``out`` and write ``out/report.html``.

    Returns the run summary (the per-stage status that the report shows). Stages whose library
    dependency does not import are skipped and listed as "not run" with the reason.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if preset not in PRESETS:
        public = [p for p in PRESETS if p != "test"]  # "test" is for the test suite
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(public)}")
    plan = build_plan(preset, data=data, data_dir=data_dir)
    store = Store(out)
    t_start = time.time()
    runnable, statuses = [], []
    for st in plan:
        missing = st.missing()
        if missing:
            statuses.append(
                {
                    "stage": st.name,
                    "kind": st.kind,
                    "description": st.description,
                    "status": "not run",
                    "jobs": len(st.configs),
                    "notes": [f"not run: dependency unavailable ({m})" for m in missing] + st.notes,
                }
            )
        else:
            runnable.append(st)
    opts = dict(executor_options or {})
    if workers is not None:
        opts["workers"] = workers
    if executor == "slurm":
        opts.setdefault("folder", str(out / "submitit"))
    ex = get_executor(executor, **opts)
    try:
        store.set_meta(
            "run",
            {
                "preset": preset,
                "data": data,
                "data_dir": data_dir,
                "executor": ex.describe(),
                "versions": versions(),
                "argv": sys.argv,
                "started": t_start,
                "preset_config": PRESETS[preset],
            },
        )
        total = sum(len(s.configs) for s in runnable)
        with tqdm(total=total, desc="   overall", disable=not progress) as bar:
            for st in runnable:
                statuses.append(run_stage(st, store, ex, out, bar=bar, progress=progress))
                store.set_meta("stages", _ordered(plan, statuses))
    finally:
        ex.close()
    summary = {
        "preset": preset,
        "stages": _ordered(plan, statuses),
        "seconds": time.time() - t_start,
        "rows": len(store),
    }
    store.set_meta("stages", summary["stages"])
    store.set_meta("last_run", {"seconds": summary["seconds"], "finished": time.time()})
    if report:
        from intertwiner.report import build_report

        summary["report"] = str(build_report(out))
    return summary


def _ordered(plan: list[Stage], statuses: list[dict]) -> list[dict]:
    by = {s["stage"]: s for s in statuses}
    return [by[p.name] for p in plan if p.name in by]
