"""Commands of a reproduction run: ``reproduce`` (and its dry run), ``results``, ``report``."""

from __future__ import annotations

import json

import typer

from intertwiner.cli._app import (
    _FILE,
    app,
    count,
    fail,
)

# ---- reproduce / results / report ---------------------------------------------------------------
# A list option: declared once here (a call in the signature would be a mutable default).
_SET = typer.Option(
    None,
    "--set",
    help="Change one setting of the preset, KEY=VALUE with a dotted key (stitch.epochs=3, "
    "sanity.absorb.max_rows=50000, alignment=null); repeatable. Part of the run's "
    "configuration: a run folder made without it refuses it (see --new-run).",
)


@app.command()
def reproduce(
    out: str | None = typer.Option(
        None, "--out", "-o", help="Run folder, e.g. runs/quick (resumes if it exists)."
    ),
    preset: str = typer.Option(
        "quick",
        help="quick (<= 15 min CPU) | full (56 min on 2 cores) | paper (GPU/cluster) | test "
        "(a minute: a smoke test of the whole pipeline).",
    ),
    data: str | None = typer.Option(
        None, help="mnist | digits | concepts | cifar10 (default: the preset's)."
    ),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Folder with the data (cifar-10-batches-py for cifar10)."
    ),
    executor: str = typer.Option("local", help="local | ray | slurm"),
    workers: int | None = typer.Option(
        None,
        callback=count(1),
        help="Parallel jobs (local: processes, default one per core; 1 = in-process).",
    ),
    threads: int | None = typer.Option(
        None,
        callback=count(1),
        help="Torch threads per job (local: default cores / workers; ray, slurm: the CPUs each "
        "job reserves, default 1). Rows are bit-identical between runs with the same count.",
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster address (ray executor; default: start a local Ray)."
    ),
    partition: str | None = typer.Option(None, help="SLURM partition."),
    slurm_cluster: str | None = typer.Option(
        None,
        "--slurm-cluster",
        help="slurm (default: needs a SLURM cluster, else an error) | local | debug: run the "
        "submitit jobs on this machine, on purpose.",
    ),
    time_min: int = typer.Option(
        60, "--time-min", callback=count(1), help="SLURM time limit per job, minutes."
    ),
    gpus: int = typer.Option(0, callback=count(0), help="GPUs per job (slurm/ray)."),
    new_run: bool = typer.Option(
        False,
        "--new-run",
        help="If OUT holds a run of another preset/configuration, write to OUT-2 (OUT-3, ...) "
        "beside it instead of refusing.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    settings: list[str] | None = _SET,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print every job with its settings beside the paper's protocol; run nothing, "
        "read no data, write nothing (--out not needed).",
    ),
) -> None:
    """Run every experiment of a preset, store the results and write OUT/report.html.

    OUT holds one run: a different preset or configuration there is refused (see --new-run), and
    a second process writing to OUT is refused while the first one lives.
    """
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments.pipeline import reproduce as run

    if dry_run:
        _dry_run(preset, data, data_dir, settings)
        return
    if not out:
        typer.echo("error: --out is required (or pass --dry-run)", err=True)
        raise typer.Exit(2)

    opts = _executor_options(executor, threads, address, partition, slurm_cluster, time_min, gpus)
    try:
        summary = run(out, preset=preset, data=data, data_dir=data_dir, executor=executor,
                      workers=workers, progress=not quiet, executor_options=opts,
                      new_run=new_run, overrides=settings)  # fmt: skip
    except (IntertwinerError, ValueError) as e:  # bad option / data / folder held by another run
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _print_summary(summary)
    if summary["first_failure"]:
        raise typer.Exit(1)


def _executor_options(
    executor: str,
    threads: int | None,
    address: str | None,
    partition: str | None,
    slurm_cluster: str | None,
    time_min: int,
    gpus: int,
) -> dict:
    """The options of the chosen executor (``threads`` was checked by its option's callback);
    --slurm-cluster without slurm exits with code 2."""
    if executor == "ray":
        return {"address": address, "gpus_per_job": gpus, "cpus_per_job": threads or 1}
    if executor == "slurm":
        opts = {"partition": partition, "time_min": time_min, "gpus": gpus, "cpus": threads or 1}
        if slurm_cluster is not None:
            opts["cluster"] = slurm_cluster
        return opts
    if slurm_cluster is not None:
        typer.echo("error: --slurm-cluster goes with --executor slurm", err=True)
        raise typer.Exit(2)
    return {} if threads is None else {"threads_per_worker": threads}


def _dry_run(
    preset: str, data: str | None, data_dir: str | None, settings: list[str] | None
) -> None:
    """``reproduce --dry-run``: the plan beside the paper's protocol (exit 2 on a bad option)."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments.dryrun import describe_plan
    from intertwiner.experiments.pipeline import check_options

    try:
        check_options(preset, "local", None)
        typer.echo(describe_plan(preset, data=data, data_dir=data_dir, overrides=settings))
    except (IntertwinerError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _print_summary(summary: dict) -> None:
    """Per-stage status lines, warnings, and the first failed job's error on stderr."""
    for w in summary.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    failed = 0
    for st in summary["stages"]:
        n_failed = len(st.get("failed", []))
        failed += n_failed
        extra = f", {n_failed} failed" if n_failed else ""
        notes = "; ".join(st.get("notes", []))
        typer.echo(f"{st['stage']:>10}: {st['status']} ({st['jobs']} jobs{extra}) {notes}".rstrip())
    out = summary["out"]
    typer.echo(f"{summary['rows']} rows in {out}/results.sqlite; {summary['seconds']:.0f} s")
    typer.echo(f"report: {summary.get('report')}")
    claims = summary.get("claims") or []
    if claims:
        counts = {v: sum(c["verdict"] == v for c in claims)
                  for v in ("holds", "does not hold", "inconclusive")}  # fmt: skip
        typer.echo(f"claims: {counts['holds']} hold, {counts['does not hold']} do not hold, "
                   f"{counts['inconclusive']} inconclusive")  # fmt: skip
        for c in claims:
            if c["verdict"] != "holds":
                typer.echo(f"  {c['verdict']}: {c['claim']} = {c['statistic']} {c['ci']}")
    first = summary.get("first_failure")
    if first:
        cfg = json.dumps(first["config"], sort_keys=True)
        typer.echo(
            f"error: {failed} job(s) failed. First failure, stage {first['stage']}, job "
            f"{cfg[:300]}:\n{first['error']}\nRerun the same command to retry the failed jobs.",
            err=True,
        )


@app.command()
def results(
    run_dir: str = typer.Argument(..., help="Run folder written by `intertwiner reproduce`."),
    fmt: str = typer.Option(
        "csv",
        "--format",
        "-f",
        help="csv (one wide row per job) | long (tidy CSV: one line per number, matrices "
        "as cells) | json",
    ),
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="Only rows of one kind: group_table, zoo, metrics, stitching, sanity, absorb, "
        "dissection, alignment.",
    ),
    output: str | None = typer.Option(
        None, "--out", "--output", "-o", callback=_FILE, help="Write to this file, not stdout."
    ),
) -> None:
    """Export the results store of a run as CSV (flat columns), tidy long CSV, or JSON."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.store import open_existing

    if fmt not in ("csv", "long", "json"):
        raise fail(f"unknown --format {fmt!r}; choose one of csv, long, json")
    try:
        store = open_existing(run_dir)  # read-only; refuses a file that is not ours
        export = {"csv": store.to_csv, "long": store.to_long_csv, "json": store.to_json}[fmt]
        text = export(kind)
    except IntertwinerError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if output:
        try:
            with open(output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as e:
            raise fail(
                f"cannot write {output}: {e.strerror}; check that its folder exists"
            ) from None
    else:
        typer.echo(text, nl=False)


@app.command()
def report(run_dir: str = typer.Argument(..., help="Run folder with results.sqlite.")) -> None:
    """Rebuild RUN_DIR/report.html from the results store."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.report import build_report

    try:
        typer.echo(str(build_report(run_dir)))
    except IntertwinerError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
