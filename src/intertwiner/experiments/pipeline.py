"""``reproduce``: run every stage of a preset through an executor into the run's results store.

Resumable by construction: a job whose config key is already in the store is skipped, and a job's
row is written only once it has finished, so killing the run at any moment loses at most the jobs
in flight. Stages run in order (later stages read the zoo's checkpoints).

A run folder holds one run (``experiments.runfolder``): its identity is recorded on creation and
checked on every later run, a lock keeps a second process out, and temporaries left by a killed
run are removed before jobs start.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from intertwiner import _allocator
from intertwiner import _products as products
from intertwiner._version import __version__
from intertwiner.experiments import presets, runfolder
from intertwiner.experiments.base import Stage, stored_config
from intertwiner.experiments.presets import build_plan, resolve_data
from intertwiner.experiments.settings import override
from intertwiner.runners import EXECUTORS, ExecutorError, get_executor
from intertwiner.store import DB_NAME, Store, config_key


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
        "blas": products.backend(),  # the library of CPU products (INTERTWINER_BLAS)
        "huge_pages": _allocator.active(),  # torch's large tensors on 2 MiB pages
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


def check_options(preset: str, executor: str, workers: int | None) -> None:
    """Refuse an unknown preset or executor, an executor whose package is missing, or a worker
    count below 1, before anything is created or run."""
    import importlib.util

    presets.get(preset)  # an unknown preset, or one that does not fit its schema, is refused
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    package = {"ray": "ray", "slurm": "submitit"}.get(executor)
    if package and importlib.util.find_spec(package) is None:
        extra = "ray" if executor == "ray" else "slurm"
        raise ExecutorError(
            f"the {executor} executor needs {package}: pip install 'intertwiner[{extra}]', or use "
            "--executor local"
        )
    if workers is not None and workers < 1:
        raise ExecutorError(f"--workers must be at least 1, got {workers}")
    products.backend()  # a bad INTERTWINER_BLAS is refused here, not in the first job


def first_failure(stages: list[dict]) -> dict | None:
    """The first failed job of a run summary's stages: ``{"stage", "config", "error"}``."""
    for st in stages:
        for f in st.get("failed", []):
            return {"stage": st["stage"], **f}
    return None


def _not_run(st: Stage, missing: list[str]) -> dict:
    return {
        "stage": st.name,
        "kind": st.kind,
        "description": st.description,
        "status": "not run",
        "jobs": len(st.configs),
        "notes": [f"not run: dependency unavailable ({m})" for m in missing] + st.notes,
    }


def _target(out: Path, ident: dict, plan_keys: set[str], new_run: bool) -> Path:
    """The folder this run writes to: ``out``, or with ``new_run`` a fresh one beside it.
    Raises RunConflictError when ``out`` holds another run (and ``new_run`` is off)."""
    target = runfolder.sibling_for(out, ident, plan_keys) if new_run else out
    diffs = runfolder.conflicts(target, ident, plan_keys)
    if diffs:
        raise runfolder.refusal(target, diffs)
    return target


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
    new_run: bool = False,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> dict:
    """Run (or resume) the experiments of ``preset`` into ``out`` and write ``out/report.html``.

    Every option is checked before anything runs. ``out`` holds one run: if it already holds a run
    of another preset, configuration or data, this raises RunConflictError listing the
    differences, or with ``new_run=True`` writes to ``out-2`` (``out-3``, ...) beside it instead.
    ``overrides`` change settings of the preset (``["stitch.epochs=3"]``, ``settings.override``);
    they are part of the run's configuration.
    A second process on the same folder gets RunLockedError. Returns the run summary (per-stage
    status, ``out``: the folder used, ``warnings``, ``first_failure``); stages whose library
    dependency does not import are listed as "not run" with the reason.
    """
    check_options(preset, executor, workers)
    settings = presets.get(preset)
    if overrides:
        settings = override(settings, overrides)  # PresetError naming a bad key
    runfolder.check_location(Path(out))
    # the preset's JSON holds the settings it names, never defaults: the identity of a run made
    # before a default was added or moved does not change (and an override is part of it)
    config = settings.to_json()
    ident = runfolder.identity(preset, config, resolve_data(settings, data, data_dir))
    plan = build_plan(settings, data=data, data_dir=data_dir)
    plan_keys = {config_key(stored_config(c)) for st in plan for c in st.configs}
    out = _target(Path(out), ident, plan_keys, new_run)
    run_info = {"preset": preset, "data": data, "data_dir": data_dir, "argv": sys.argv,
                "preset_config": config}  # fmt: skip
    with runfolder.RunLock(out):
        diffs = runfolder.conflicts(out, ident, plan_keys)  # again: another run may have begun
        if diffs:
            raise runfolder.refusal(out, diffs)
        ex_options = _executor_options(out, executor, workers, executor_options)
        try:
            summary = _run_and_report(out, plan, plan_keys, ident, run_info, progress, report,
                                      executor, ex_options)  # fmt: skip
        finally:  # interrupted or not: leave the store as one file (Store.close)
            if (out / DB_NAME).is_file():
                Store(out).close()
    return summary


def _run_and_report(
    out: Path,
    plan: list[Stage],
    plan_keys: set[str],
    ident: dict,
    run_info: dict,
    progress: bool,
    report: bool,
    executor: str,
    executor_options: dict,
) -> dict:
    """Run the stages through a new ``executor`` (closed afterwards); write the report if asked."""
    ex = get_executor(executor, **executor_options)
    try:
        summary = _run_stages(out, plan, plan_keys, ident, ex, run_info, progress)
    finally:
        ex.close()
    if report:
        from intertwiner.report import build_report, claim_verdicts

        summary["report"] = str(build_report(out))
        summary["claims"] = claim_verdicts(out)
    return summary


def _executor_options(out: Path, executor: str, workers: int | None, options: dict | None) -> dict:
    opts = dict(options or {})
    if workers is not None:
        opts["workers"] = workers
    if executor == "slurm":
        opts.setdefault("folder", str(out / "submitit"))
    return opts


def _run_stages(
    out: Path,
    plan: list[Stage],
    plan_keys: set[str],
    ident: dict,
    ex: Any,
    run_info: dict,
    progress: bool,
) -> dict:
    """Record the run, clean up leftovers, run every stage; returns the summary (no report)."""
    from tqdm.auto import tqdm

    store = Store(out)
    warnings = runfolder.record_identity(store, ident)
    store.set_meta("jobs", sorted(plan_keys))
    removed = runfolder.remove_leftovers(out)
    t_start = time.time()
    store.set_meta(
        "run", {**run_info, "executor": ex.describe(), "versions": versions(), "started": t_start}
    )
    statuses, runnable = [], []
    for st in plan:
        missing = st.missing()
        if missing:
            statuses.append(_not_run(st, missing))
        else:
            runnable.append(st)
    total = sum(len(s.configs) for s in runnable)
    with tqdm(total=total, desc="   overall", disable=not progress) as bar:
        for st in runnable:
            statuses.append(run_stage(st, store, ex, out.resolve(), bar=bar, progress=progress))
            store.set_meta("stages", _ordered(plan, statuses))
    stages = _ordered(plan, statuses)
    seconds = time.time() - t_start
    store.set_meta("stages", stages)
    store.set_meta("last_run", {"seconds": seconds, "finished": time.time()})
    return {
        "preset": run_info["preset"],
        "out": str(out),
        "stages": stages,
        "seconds": seconds,
        "rows": len(store.keys() & plan_keys),
        "warnings": warnings,
        "removed_leftovers": [p.relative_to(out).as_posix() for p in removed],
        "first_failure": first_failure(stages),
    }


def _ordered(plan: list[Stage], statuses: list[dict]) -> list[dict]:
    by = {s["stage"]: s for s in statuses}
    return [by[p.name] for p in plan if p.name in by]
