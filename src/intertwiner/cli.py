"""The ``intertwiner`` command line (typer).

Each command is a thin wrapper: parse options, call the library, print a table or JSON. Heavy
imports happen inside the commands so that ``intertwiner --help`` is fast.
"""

from __future__ import annotations

import json

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symmetries of neural networks: intertwiner groups, weight-space symmetries, "
    "representation metrics modulo symmetry, model stitching.",
)


def fail(error: Exception | str, code: int = 2) -> typer.Exit:
    """Print ``error`` as a one-line message on stderr and return the Exit to raise."""
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code)


@app.callback()
def _main() -> None:
    """intertwiner: symmetries of deep learning models and their internal representations."""


# ---- groups ------------------------------------------------------------------------------------
@app.command()
def groups(
    activation: str | None = typer.Option(
        None, "--activation", "-a", help="Print one row: an activation name such as relu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trials: int = typer.Option(16, help="Sampled group elements per verification."),
) -> None:
    """Print the intertwiner group of every known activation, verified and rediscovered."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.groups.table import format_table, group_table

    try:
        rows = group_table([activation] if activation else None, trials=trials)
    except IntertwinerError as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))


# ---- train / zoo (engineer A) ------------------------------------------------------------------
def _fit_options(
    arch: str,
    activation: str | None,
    data: str,
    data_dir: str | None,
    split_seed: int,
    val_fraction: float,
    augment: bool,
    width: int | None,
    model_config: str | None,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    weight_decay: float,
    schedule: str,
    threads: int | None,
    quiet: bool,
):
    """Shared by ``train`` and ``zoo``: (DataSplits, model config dict, TrainConfig)."""
    from intertwiner import data as data_mod
    from intertwiner import models
    from intertwiner.training import TrainConfig

    options: dict = {"seed": split_seed, "val_fraction": val_fraction, "augment": augment}
    if data_dir is not None:
        options["root"] = data_dir
    elif data.lower().startswith("cifar"):
        options["root"] = None  # cifar10 explains where to get the data
    splits = data_mod.load(data, **options)
    cfg = json.loads(model_config) if model_config else {}
    if not isinstance(cfg, dict):
        raise ValueError("--model-config must be a JSON object, e.g. '{\"widths\": [64, 32]}'")
    if activation is not None:
        cfg["activation"] = activation
    if width is not None:
        key = {"vit": "dim"}.get(arch, "width")
        if key not in models.defaults(arch):
            raise ValueError(f"{arch} has no single width; use --model-config (e.g. widths)")
        cfg[key] = width
    cfg = {**splits.model_config(), **cfg}
    tc = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        num_threads=threads,
        progress=not quiet,
    )
    return splits, cfg, tc


_ARCH_HELP = "mlp | myrtle_cnn | resnet20 | resnet18 | vit"


@app.command()
def train(
    arch: str = typer.Option(..., "--arch", help=_ARCH_HELP),
    activation: str | None = typer.Option(None, "--activation", "-a", help="e.g. relu, tanh."),
    data: str = typer.Option("mnist", "--data", help="digits | mnist | cifar10 | synthetic"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Has cifar-10-batches-py/."),
    seed: int = typer.Option(0, "--seed", help="Initial weights and batch order."),
    split_seed: int = typer.Option(0, "--split-seed", help="Which examples form validation."),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Flip/translate train."),
    width: int | None = typer.Option(None, "--width", help="Width multiplier (vit: dim)."),
    model_config: str | None = typer.Option(None, "--model-config", help="JSON of build() keys."),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam | sgd"),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    schedule: str = typer.Option("step", "--schedule", help="none | step | cosine"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    out: str = typer.Option(..., "--out", help="Folder for the checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train one model and save {arch}-{activation}-seed{seed}.safetensors (+ .json) in --out."""
    from pathlib import Path

    from intertwiner import checkpoints, models
    from intertwiner.errors import IntertwinerError
    from intertwiner.training import train as fit
    from intertwiner.training import zoo_filename

    try:
        splits, cfg, tc = _fit_options(
            arch, activation, data, data_dir, split_seed, val_fraction, augment, width,
            model_config, epochs, batch_size, optimizer, lr, weight_decay, schedule, threads, quiet,
        )  # fmt: skip
        tc.seed = seed
        model = models.build(arch, seed=seed, **cfg)
        result = fit(model, splits, tc)
        act = model.intertwiner_config["activation"]
        path = Path(out) / zoo_filename(model.intertwiner_config["arch"], act, seed)
        meta = {
            "dataset": splits.meta["name"],
            "data_meta": splits.meta,
            "split_seed": split_seed,
            "train_seed": seed,
            "init_seed": seed,
            "train_config": tc.to_dict(),
            "history": result.history,
            **result.summary(),
        }
        checkpoints.save(result.model, path, meta)
    except (IntertwinerError, ValueError) as e:
        raise fail(e) from None
    typer.echo(json.dumps({"checkpoint": str(path), **result.summary()}, indent=2))


@app.command()
def zoo(
    arch: str = typer.Option(..., "--arch", help=_ARCH_HELP),
    seeds: str = typer.Option("0-3", "--seeds", help="e.g. 0-3 or 0,2,5."),
    activation: str | None = typer.Option(None, "--activation", "-a", help="e.g. relu, tanh."),
    data: str = typer.Option("mnist", "--data", help="digits | mnist | cifar10 | synthetic"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Has cifar-10-batches-py/."),
    split_seed: int = typer.Option(0, "--split-seed", help="Which examples form validation."),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Flip/translate train."),
    width: int | None = typer.Option(None, "--width", help="Width multiplier (vit: dim)."),
    model_config: str | None = typer.Option(None, "--model-config", help="JSON of build() keys."),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam | sgd"),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    schedule: str = typer.Option("step", "--schedule", help="none | step | cosine"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    out: str = typer.Option(..., "--out", help="Folder for the checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train one model per seed into --out; seeds with a valid checkpoint are skipped (resume)."""
    from intertwiner import checkpoints
    from intertwiner.errors import IntertwinerError
    from intertwiner.training import train_zoo

    try:
        splits, cfg, tc = _fit_options(
            arch, activation, data, data_dir, split_seed, val_fraction, augment, width,
            model_config, epochs, batch_size, optimizer, lr, weight_decay, schedule, threads, quiet,
        )  # fmt: skip
        tc.progress = False  # one bar over seeds is enough
        paths = train_zoo(arch, seeds, splits, out, model_config=cfg, train_config=tc,
                          progress=not quiet)  # fmt: skip
    except (IntertwinerError, ValueError) as e:
        raise fail(e) from None
    rows = []
    for p in paths:
        meta = checkpoints.read_metadata(p)
        rows.append({"checkpoint": str(p), "val_accuracy": meta.get("val_accuracy"),
                     "test_accuracy": meta.get("test_accuracy")})  # fmt: skip
    typer.echo(json.dumps(rows, indent=2))


# ---- reproduce / results / report (engineer F) -------------------------------------------------
@app.command()
def reproduce(
    out: str = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/quick (resumes if it exists)."),
    preset: str = typer.Option("quick", help="quick (<= 15 min CPU) | full (~1 h CPU) | paper (GPU/cluster)."),
    data: str | None = typer.Option(
        None, help="mnist | digits | concepts | cifar10 (default: the preset's)."
    ),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Folder with the data (cifar-10-batches-py for cifar10)."
    ),
    executor: str = typer.Option("local", help="local | ray | slurm"),
    workers: int | None = typer.Option(
        None, help="Parallel jobs (local: processes, default one per core; 1 = in-process)."
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster address (ray executor; default: start a local Ray)."
    ),
    partition: str | None = typer.Option(None, help="SLURM partition."),
    time_min: int = typer.Option(60, "--time-min", help="SLURM time limit per job, minutes."),
    gpus: int = typer.Option(0, help="GPUs per job (slurm/ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run every experiment of a preset, store the results and write OUT/report.html."""
    from intertwiner.experiments.pipeline import reproduce as run

    opts: dict = {}
    if executor == "ray":
        opts = {"address": address, "gpus_per_job": gpus}
    elif executor == "slurm":
        opts = {"partition": partition, "time_min": time_min, "gpus": gpus}
    summary = run(out, preset=preset, data=data, data_dir=data_dir, executor=executor,
                  workers=workers, progress=not quiet, executor_options=opts)
    failed = 0
    for st in summary["stages"]:
        n_failed = len(st.get("failed", []))
        failed += n_failed
        extra = f", {n_failed} failed" if n_failed else ""
        notes = "; ".join(st.get("notes", []))
        typer.echo(f"{st['stage']:>10}: {st['status']} ({st['jobs']} jobs{extra}) {notes}".rstrip())
    typer.echo(f"{summary['rows']} rows in {out}/results.sqlite; {summary['seconds']:.0f} s")
    typer.echo(f"report: {summary.get('report')}")
    if failed:
        raise typer.Exit(1)


@app.command()
def results(
    run_dir: str = typer.Argument(..., help="Run folder written by `intertwiner reproduce`."),
    fmt: str = typer.Option("csv", "--format", "-f", help="csv | json"),
    kind: str | None = typer.Option(
        None, help="Only rows of one kind: group_table, zoo, metrics, stitching, sanity, dissection."
    ),
    output: str | None = typer.Option(None, "--output", help="Write to a file, not stdout."),
) -> None:
    """Export the results store of a run as CSV (flat columns) or JSON."""
    from intertwiner.store import open_existing

    if fmt not in ("csv", "json"):
        raise typer.BadParameter("--format must be csv or json")
    store = open_existing(run_dir)
    text = store.to_csv(kind) if fmt == "csv" else store.to_json(kind)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        typer.echo(text, nl=False)


@app.command()
def report(run_dir: str = typer.Argument(..., help="Run folder with results.sqlite.")) -> None:
    """Rebuild RUN_DIR/report.html from the results store."""
    from intertwiner.report import build_report

    typer.echo(str(build_report(run_dir)))


if __name__ == "__main__":  # pragma: no cover
    app()
