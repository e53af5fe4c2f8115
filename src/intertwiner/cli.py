"""The ``intertwiner`` command line (typer).

Each command is a thin wrapper: parse options, call the library, print a table or JSON. Heavy
imports happen inside the commands so that ``intertwiner --help`` is fast.
"""

from __future__ import annotations

import json
import os
import re
import sys

import typer

from intertwiner.errors import InvalidOptionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symmetries of neural networks: intertwiner groups, weight-space symmetries, "
    "representation metrics modulo symmetry, model stitching.",
)

_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_type(self, ctx):
    """A flag takes no value: show no ``<bool>`` placeholder in --help (typer shows one)."""
    return None if self.is_flag else _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type


def fail(error: Exception | str, code: int = 2) -> typer.Exit:
    """Print ``error`` as a one-line message on stderr and return the Exit to raise."""
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code)


# ---- option checks (typer callbacks: bad input exits with code 2 and one line, no traceback) ----
def _checked(check):
    """A typer callback running ``check(value)`` (an ``intertwiner._validate`` function); its
    error becomes typer's BadParameter (exit code 2, the option named, no traceback)."""

    def callback(value):
        if value is None:
            return value
        try:
            return check(value)
        except (ValueError, TypeError) as e:
            raise typer.BadParameter(str(e)) from None

    return callback


def _folder(value: str) -> str:
    from pathlib import Path

    if Path(value).exists() and not Path(value).is_dir():
        raise InvalidOptionError(
            f"{value} is an existing file; --out names a folder (new or existing)"
        )
    return value


def _device(value: str) -> str:
    from intertwiner._validate import device

    return str(device(value, "--device"))


def _fraction(value: float) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, "the fraction", low=0.0, high=1.0, high_open=True)


def _positive_number(value: float) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, "the value", low=0.0, low_open=True)


def _nonnegative_number(value: float) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, "the value", low=0.0)


def _seeds(value: str) -> str:
    from intertwiner.training import parse_seeds

    parse_seeds(value)
    return value


_FOLDER, _DEVICE, _FRACTION = _checked(_folder), _checked(_device), _checked(_fraction)
_POSITIVE, _NONNEGATIVE = _checked(_positive_number), _checked(_nonnegative_number)


class PlainLog:
    """A text stream for logs: progress bars' carriage returns become line breaks, terminal
    escape codes and the blank lines bars leave when they clear are dropped (stderr when it is
    not a terminal, e.g. a file or a CI log)."""

    _ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, stream) -> None:
        self.stream = stream
        self._at_line_start = True

    def write(self, text: str) -> int:
        clean = self._ESCAPE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
        out = []
        for k, line in enumerate(clean.split("\n")):
            if k > 0 and not self._at_line_start:
                out.append("\n")
                self._at_line_start = True
            line = line.rstrip() if k < clean.count("\n") else line
            if line.strip():
                out.append(line)
                self._at_line_start = False
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@app.callback()
def _main() -> None:
    """intertwiner: symmetries of deep learning models and their internal representations."""
    if not isinstance(sys.stderr, PlainLog) and not _isatty(sys.stderr):
        sys.stderr = PlainLog(sys.stderr)
        # one progress line every 10 s is plenty in a log
        os.environ.setdefault("TQDM_MININTERVAL", "10")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---- groups ------------------------------------------------------------------------------------
@app.command()
def groups(
    activation: str | None = typer.Option(
        None, "--activation", "-a", help="Print one row: an activation name such as relu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trials: int = typer.Option(16, min=1, help="Sampled group elements per verification."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Print the intertwiner group of every known activation, verified and rediscovered."""
    from tqdm.auto import tqdm

    from intertwiner.errors import IntertwinerError
    from intertwiner.groups._table import TABLE_ROWS, format_table, group_row

    names = [activation] if activation is not None else list(TABLE_ROWS)
    try:
        # about 2.5 s a row (verification and discovery): show which row is being worked on
        bar = tqdm(names, desc="groups", unit="activation", disable=quiet or len(names) == 1)
        rows = []
        for name in bar:
            bar.set_postfix_str(name)
            rows.append(group_row(name, trials=trials))
    except IntertwinerError as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))


# ---- train / zoo --------------------------------------------------------------------------------
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
    try:
        cfg = json.loads(model_config) if model_config else {}
    except json.JSONDecodeError as e:
        raise InvalidOptionError(
            f"--model-config is not valid JSON ({e}); write an object, e.g. '{{\"widths\": [64]}}'"
        ) from None
    if not isinstance(cfg, dict):
        raise InvalidOptionError(
            "--model-config must be a JSON object, e.g. '{\"widths\": [64, 32]}'"
        )
    if activation is not None:
        cfg["activation"] = activation
    if width is not None:
        key = {"vit": "dim"}.get(arch, "width")
        if key not in models.defaults(arch):
            raise InvalidOptionError(
                f"{arch} has no single width; use --model-config (e.g. widths)"
            )
        cfg[key] = width
    cfg = {**splits.model_config(), **cfg}
    try:  # a wrong type in --model-config surfaces here, with the option named
        models.build(arch, seed=0, **cfg)  # seeded: leaves the global RNG alone
    except TypeError as e:
        raise InvalidOptionError(f"--model-config does not build {arch}: {e}") from None
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

# Options shared by `train` and `zoo` (typer reads each as a default value).
_OPT_ACTIVATION = typer.Option(None, "--activation", "-a", help="e.g. relu, tanh.")
_OPT_DATA = typer.Option("mnist", "--data", help="mnist | digits | concepts | synthetic | cifar10")
_OPT_DATA_DIR = typer.Option(None, "--data-dir", help="Has cifar-10-batches-py/.")
_OPT_SPLIT_SEED = typer.Option(0, "--split-seed", min=0, help="Which examples form validation.")
_OPT_VAL_FRACTION = typer.Option(0.1, "--val-fraction", callback=_FRACTION)
_OPT_AUGMENT = typer.Option(False, "--augment/--no-augment", help="Flip/translate train.")
_OPT_WIDTH = typer.Option(
    None,
    "--width",
    min=1,
    help="Channels of the first stage, a count, not a multiplier (myrtle_cnn, resnet: "
    "later stages double it; vit: the embedding dim).",
)
_OPT_MODEL_CONFIG = typer.Option(None, "--model-config", help="JSON of build() keys.")
_OPT_EPOCHS = typer.Option(5, "--epochs", min=1)
_OPT_BATCH_SIZE = typer.Option(128, "--batch-size", min=1)
_OPT_OPTIMIZER = typer.Option("adam", "--optimizer", help="adam | sgd")
_OPT_LR = typer.Option(1e-3, "--lr", callback=_POSITIVE)
_OPT_WEIGHT_DECAY = typer.Option(1e-4, "--weight-decay", callback=_NONNEGATIVE)
_OPT_SCHEDULE = typer.Option("step", "--schedule", help="none | step | cosine")
_OPT_THREADS = typer.Option(None, "--threads", min=1, help="torch CPU threads.")


@app.command()
def train(
    arch: str = typer.Option(..., "--arch", help=_ARCH_HELP),
    activation: str | None = _OPT_ACTIVATION,
    data: str = _OPT_DATA,
    data_dir: str | None = _OPT_DATA_DIR,
    seed: int = typer.Option(0, "--seed", min=0, help="Initial weights and batch order."),
    split_seed: int = _OPT_SPLIT_SEED,
    val_fraction: float = _OPT_VAL_FRACTION,
    augment: bool = _OPT_AUGMENT,
    width: int | None = _OPT_WIDTH,
    model_config: str | None = _OPT_MODEL_CONFIG,
    epochs: int = _OPT_EPOCHS,
    batch_size: int = _OPT_BATCH_SIZE,
    optimizer: str = _OPT_OPTIMIZER,
    lr: float = _OPT_LR,
    weight_decay: float = _OPT_WEIGHT_DECAY,
    schedule: str = _OPT_SCHEDULE,
    threads: int | None = _OPT_THREADS,
    out: str = typer.Option(..., "--out", callback=_FOLDER, help="Folder for the checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train one model and save {arch}-{activation}-seed{seed}.safetensors (+ .json) in --out."""
    from pathlib import Path

    from intertwiner import models
    from intertwiner.errors import IntertwinerError
    from intertwiner.groups import activation_name
    from intertwiner.training import train_checkpoint, zoo_filename

    try:
        splits, cfg, tc = _fit_options(
            arch, activation, data, data_dir, split_seed, val_fraction, augment, width,
            model_config, epochs, batch_size, optimizer, lr, weight_decay, schedule, threads, quiet,
        )  # fmt: skip
        tc.seed = seed
        act = activation_name(cfg.get("activation", models.defaults(arch)["activation"]))
        path = Path(out) / zoo_filename(arch, act, seed)
        result = train_checkpoint(arch, cfg, splits, tc, path)
    except (IntertwinerError, ValueError) as e:
        raise fail(e) from None
    typer.echo(json.dumps({"checkpoint": str(path), **result.summary()}, indent=2))


@app.command()
def zoo(
    arch: str = typer.Option(..., "--arch", help=_ARCH_HELP),
    seeds: str = typer.Option("0-3", "--seeds", callback=_checked(_seeds), help="e.g. 0-3, 0,2,5."),
    activation: str | None = _OPT_ACTIVATION,
    data: str = _OPT_DATA,
    data_dir: str | None = _OPT_DATA_DIR,
    split_seed: int = _OPT_SPLIT_SEED,
    val_fraction: float = _OPT_VAL_FRACTION,
    augment: bool = _OPT_AUGMENT,
    width: int | None = _OPT_WIDTH,
    model_config: str | None = _OPT_MODEL_CONFIG,
    epochs: int = _OPT_EPOCHS,
    batch_size: int = _OPT_BATCH_SIZE,
    optimizer: str = _OPT_OPTIMIZER,
    lr: float = _OPT_LR,
    weight_decay: float = _OPT_WEIGHT_DECAY,
    schedule: str = _OPT_SCHEDULE,
    threads: int | None = _OPT_THREADS,
    out: str = typer.Option(..., "--out", callback=_FOLDER, help="Folder for the checkpoints."),
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


# ---- reproduce / results / report ---------------------------------------------------------------
@app.command()
def reproduce(
    out: str | None = typer.Option(
        None, "--out", "-o", help="Run folder, e.g. runs/quick (resumes if it exists)."
    ),
    preset: str = typer.Option(
        "quick",
        help="quick (<= 15 min CPU) | full (~50 min on 2 cores) | paper (GPU/cluster) | test "
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
        None, help="Parallel jobs (local: processes, default one per core; 1 = in-process)."
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
    time_min: int = typer.Option(60, "--time-min", help="SLURM time limit per job, minutes."),
    gpus: int = typer.Option(0, help="GPUs per job (slurm/ray)."),
    new_run: bool = typer.Option(
        False,
        "--new-run",
        help="If OUT holds a run of another preset/configuration, write to OUT-2 (OUT-3, ...) "
        "beside it instead of refusing.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
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
        _dry_run(preset, data, data_dir)
        return
    if not out:
        typer.echo("error: --out is required (or pass --dry-run)", err=True)
        raise typer.Exit(2)

    opts: dict = {}
    if executor == "ray":
        opts = {"address": address, "gpus_per_job": gpus}
    elif executor == "slurm":
        opts = {"partition": partition, "time_min": time_min, "gpus": gpus}
        if slurm_cluster is not None:
            opts["cluster"] = slurm_cluster
    elif slurm_cluster is not None:
        typer.echo("error: --slurm-cluster goes with --executor slurm", err=True)
        raise typer.Exit(2)
    try:
        summary = run(
            out,
            preset=preset,
            data=data,
            data_dir=data_dir,
            executor=executor,
            workers=workers,
            progress=not quiet,
            executor_options=opts,
            new_run=new_run,
        )
    except (IntertwinerError, ValueError) as e:  # bad option / data / folder held by another run
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _print_summary(summary)
    if summary["first_failure"]:
        raise typer.Exit(1)


def _dry_run(preset: str, data: str | None, data_dir: str | None) -> None:
    """``reproduce --dry-run``: the plan beside the paper's protocol (exit 2 on a bad option)."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments.dryrun import describe_plan
    from intertwiner.experiments.pipeline import check_options

    try:
        check_options(preset, "local", None)
        typer.echo(describe_plan(preset, data=data, data_dir=data_dir))
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
        help="Only rows of one kind: group_table, zoo, metrics, stitching, sanity, absorb, "
        "dissection, alignment.",
    ),
    output: str | None = typer.Option(None, "--output", help="Write to a file, not stdout."),
) -> None:
    """Export the results store of a run as CSV (flat columns), tidy long CSV, or JSON."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.store import open_existing

    if fmt not in ("csv", "long", "json"):
        raise typer.BadParameter("--format must be csv, long or json")
    try:
        store = open_existing(run_dir)  # read-only; refuses a file that is not ours
        export = {"csv": store.to_csv, "long": store.to_long_csv, "json": store.to_json}[fmt]
        text = export(kind)
    except IntertwinerError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
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


# ---- sanity / dissect ---------------------------------------------------------------------------
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _write_json(path, obj) -> None:
    """Write ``obj`` as JSON atomically (a temporary beside ``path``, then a rename)."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@app.command()
def sanity(
    arch: str = typer.Option("myrtle_cnn", "--arch", help=_ARCH_HELP),
    activation: str = typer.Option("relu", "--activation", "-a", help="Comma list: relu,sigmoid."),
    data: str = typer.Option("mnist", "--data", help="digits | mnist | concepts | synthetic"),
    sites: str | None = typer.Option(None, "--sites", help="Comma list; default: all but last."),
    kinds: str = typer.Option("group,orthogonal", "--kinds", help="identity,group,orthogonal,.."),
    repeats: int = typer.Option(3, "--repeats", min=1),
    epochs: int = typer.Option(2, "--epochs", min=0, help="Retraining epochs (0: no retraining)."),
    base_epochs: int = typer.Option(6, "--base-epochs", min=1, help="Epochs for the base model."),
    width: int = typer.Option(8, "--width", min=1, help="Width of the base model."),
    batchnorm: bool = typer.Option(False, "--batchnorm/--no-batchnorm", help="Paper: none."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Use this trained model."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base model, transforms and retraining."),
    lr: float = typer.Option(1e-3, "--lr", callback=_POSITIVE),
    batch_size: int = typer.Option(
        128, "--batch-size", min=1, help="Base training and retraining."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    out: str = typer.Option(
        ..., "--out", callback=_FOLDER, help="Folder for checkpoints, rows and figure."
    ),
    refit: bool = typer.Option(
        False,
        "--refit",
        help="Instead of retraining, refit only the next layer in closed form (least squares "
        "on frozen features): a map in the activation's group is absorbed exactly.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Rotation sanity test: fixed transform before an activation, retrain the rest, penalty."""
    from pathlib import Path

    from intertwiner import checkpoints, models
    from intertwiner import data as data_mod
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments import sanity as san
    from intertwiner.training import TrainConfig, train_checkpoint

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        splits = data_mod.load(data, seed=seed)
        config = san.SanityConfig(
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, num_threads=threads
        )
        for act in [None] if checkpoint else _csv(activation):
            if checkpoint:
                model, _ = checkpoints.load(checkpoint)
            else:
                bn = "-bn" if batchnorm else ""
                path = out_dir / f"base-{arch}-{act}-w{width}{bn}-seed{seed}.safetensors"
                if checkpoints.is_valid(path):
                    model, _ = checkpoints.load(path)
                else:
                    cfg = {**splits.model_config(), "activation": act}
                    if "batchnorm" in models.defaults(arch):
                        cfg["batchnorm"] = batchnorm
                    if "width" in models.defaults(arch):
                        cfg["width"] = width
                    tc = TrainConfig(epochs=base_epochs, batch_size=batch_size, lr=lr, seed=seed,
                                     num_threads=threads, progress=not quiet)  # fmt: skip
                    model = train_checkpoint(arch, cfg, splits, tc, path).model
            site_list = _csv(sites) if sites else models.sites(model)[:-1]
            if refit:
                from intertwiner.experiments import absorb

                ac = absorb.AbsorbConfig(seed=seed, num_threads=threads)
                rows += absorb.absorb_test(model, site_list, _csv(kinds), repeats, splits, ac,
                                           progress=not quiet)  # fmt: skip
                continue
            rows += san.sanity_test(model, site_list, _csv(kinds), repeats, splits, config,
                                    progress=not quiet)  # fmt: skip
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    if refit:
        from intertwiner.experiments.absorb import format_table

        _write_json(out_dir / "refit_rows.json", rows)
        typer.echo(format_table(rows))
        typer.echo(f"(accuracies and drops in points; rows: {out_dir / 'refit_rows.json'})")
        return
    summary = san.summarize(rows)
    _write_json(out_dir / "sanity_rows.json", rows)
    _write_json(out_dir / "sanity_summary.json", summary)
    figure = san.plot_penalties(summary, out_dir / "sanity.png")
    typer.echo(san.format_table(summary))
    typer.echo(f"(accuracies and penalties in points; {repeats} repeats, {epochs} epochs)")
    typer.echo(f"rows: {out_dir / 'sanity_rows.json'}  figure: {figure}")


@app.command()
def dissect(
    checkpoint: str = typer.Argument(..., help="A model checkpoint (.safetensors)."),
    layer: str = typer.Option(..., "--layer", help="A conv activation site, e.g. block2.act."),
    data: str = typer.Option("concepts", "--data", help="Only concepts (scenes with masks)."),
    n_orthogonal: int = typer.Option(3, "--n-orthogonal", min=0, help="Random rotations."),
    powers: str = typer.Option("0,0.1,0.2,0.3,0.5,0.7,1", "--powers", help="Rotation powers."),
    quantile: float = typer.Option(
        0.005, "--quantile", callback=_FRACTION, help="Top fraction that is 'on'."
    ),
    iou_threshold: float = typer.Option(0.04, "--iou-threshold", callback=_FRACTION),
    n_rotations: int = typer.Option(
        4, "--n-rotations", min=1, help="For the label-free statistics."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Group element and rotations."),
    out: str | None = typer.Option(
        None, "--out", callback=_FOLDER, help="Folder for JSON and the figure."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Network dissection of LAYER on the concept scenes under changes of basis."""
    from pathlib import Path

    from intertwiner import checkpoints
    from intertwiner import dissection as dis
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments.rotation_dissection import dissection_experiment
    from intertwiner.report.rotation_curve import plot_rotation_curve

    if data != "concepts":
        raise fail("dissection needs concept masks: only --data concepts is available")
    try:
        model, meta = checkpoints.load(checkpoint)
        if int(model.intertwiner_config.get("in_channels", 3)) != 3:
            raise InvalidOptionError(
                "the concept scenes are RGB: dissect a model with in_channels=3"
            )
        recorded = meta.get("dataset") == "concepts"
        splits = checkpoints.data_splits(
            meta, dataset=None if recorded else "concepts", source=checkpoint,
            size=int(model.intertwiner_config.get("input_size", 32)),
        )  # fmt: skip
        exp = dissection_experiment(
            model, layer, splits.test, n_orthogonal=n_orthogonal,
            powers=[float(p) for p in _csv(powers)], seed=seed, quantile=quantile,
            iou_threshold=iou_threshold, progress=not quiet,
        )  # fmt: skip
        align = dis.basis_alignment(model, layer, splits.test, n_rotations=n_rotations, seed=seed)
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    payload = {"checkpoint": checkpoint, "layer": layer, "rows": exp["rows"], "alignment": align}
    figure = None
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"dissection-{layer}.json").write_text(json.dumps(payload, indent=2))
        figure = plot_rotation_curve(exp, out_dir / f"dissection-{layer}.png")
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    n_units = exp["rows"][0]["n_units"]
    typer.echo(f"{layer}: {n_units} units, {exp['rows'][0]['n_images']} test scenes, "
               f"IoU > {iou_threshold} at the top {quantile:g} quantile")  # fmt: skip
    typer.echo(f"{'basis':<14} {'interpretable':>13} {'concepts':>8} {'mean IoU':>8}  detected")
    for r in exp["rows"]:
        typer.echo(f"{r['basis']:<14} {r['n_interpretable']:>13} {r['n_concepts']:>8} "
                   f"{r['mean_best_iou']:>8.3f}  {r['concepts']}")  # fmt: skip
    typer.echo(f"\n{'basis':<14} {'kurtosis':>9} {'hoyer':>6} {'near 0':>6}  (label-free)")
    for r in align:
        typer.echo(f"{r['basis']:<14} {r['kurtosis']:>9.2f} {r['hoyer']:>6.3f} "
                   f"{r['near_zero']:>6.3f}")  # fmt: skip
    if figure is not None:
        typer.echo(f"figure: {figure}")


# ---- symmetries ---------------------------------------------------------------------------------
@app.command()
def symmetries(
    checkpoint: str = typer.Argument(..., help="A .safetensors checkpoint written by train/zoo."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    seed: int = typer.Option(0, min=0, help="Seed for the random input batch and elements."),
    batch: int = typer.Option(8, min=1, help="Random inputs used to verify each site."),
) -> None:
    """Trace a checkpoint's weight-space symmetries and verify each site.

    Errors are relative: max |f(x) - f_g(x)| / max |f(x)| with a random element g at one site,
    in float64 (exactness of the symmetry) and in float32 (round-off at the model's precision).
    """
    import torch

    from intertwiner.checkpoints import load
    from intertwiner.errors import IntertwinerError
    from intertwiner.symmetry import check, random_elements, site_errors, trace

    try:
        model, meta = load(checkpoint)
        config = meta.get("config", {})
        gen = torch.Generator().manual_seed(seed)
        size = int(config.get("input_size", 32))
        shape = (batch, int(config.get("in_channels", 3)), size, size)
        x = torch.randn(shape, generator=gen)
        model = model.float()
        spec = trace(model, x)
        err32 = site_errors(model, spec, x, generator=torch.Generator().manual_seed(seed))
        m64, x64 = model.double(), x.double()
        err64 = site_errors(m64, spec, x64, generator=torch.Generator().manual_seed(seed))
        elements = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = float(m64.eval()(x64).abs().max()) or 1.0
        total64 = check(m64, spec, x64, elements=elements) / ref
    except IntertwinerError as e:
        raise fail(e) from None
    if as_json:
        out = spec.to_dict()
        for s in out["sites"]:
            s["error_float64"], s["error_float32"] = err64[s["name"]], err32[s["name"]]
        out["all_sites_error_float64"] = total64
        out["checkpoint"] = checkpoint
        typer.echo(json.dumps(out, indent=2))
        return
    arch, act = meta.get("arch"), meta.get("activation")
    typer.echo(f"{checkpoint}: {arch} ({act}), {len(spec.sites)} sites")
    typer.echo(spec.table(errors=err64, error_label="err f64"))
    typer.echo(
        f"\nerr f64: relative output change with a random element at one site (float64); "
        f"float32 max {max(err32.values(), default=0.0):.1e}; all sites at once (float64) "
        f"{total64:.1e}."
    )


# ---- stitch -------------------------------------------------------------------------------------
def _init_samples(text: str | None) -> int | str | None:
    """``--init-samples``: None, "auto" or a positive int."""
    if text is None or text == "auto":
        return text
    from intertwiner._validate import positive_int

    try:
        return positive_int(int(text), "--init-samples")
    except ValueError:
        raise InvalidOptionError(
            f"--init-samples takes a number of inputs (>= 1) or 'auto', got {text!r}"
        ) from None


@app.command("stitch")
def stitch_command(
    checkpoint_a: str = typer.Argument(..., help="Checkpoint of model A (its front is used)."),
    checkpoint_b: str = typer.Argument(..., help="Checkpoint of model B (its back is used)."),
    at: str = typer.Option(..., "--at", help="Site: a module name such as block2.act."),
    layer: str = typer.Option(
        "auto",
        "--layer",
        help="full | orthogonal | low_rank:R | lasso:LAM | diagonal | permutation | perm_scale "
        "| signed_perm | monomial | auto (the group of the site's activation).",
    ),
    solver: str = typer.Option("match", help="perm_scale/permutation solver: match | birkhoff."),
    epochs: int | None = typer.Option(
        None,
        min=0,
        help="Training epochs of the stitch (0: initialisation only; default 2, or the paper's 20 "
        "for birkhoff).",
    ),
    lr: float | None = typer.Option(
        None,
        callback=_POSITIVE,
        help="Learning rate (default 1e-2 Adam, or the paper's 1e-3 SGD for birkhoff).",
    ),
    bias: bool = typer.Option(False, "--bias/--no-bias", help="Give the stitch a bias."),
    init_samples: str | None = typer.Option(
        None,
        help="Training inputs for the matching / closed-form statistics: N, or auto (stop when "
        "the assignment has converged); default all. Fewer is faster, usually a little worse.",
    ),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    data: str | None = typer.Option(
        None, "--data", help="Dataset name (default: the one in A's checkpoint metadata)."
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    seed: int = typer.Option(0, min=0, help="Seed of the stitch's init and batch order."),
    residual: str = typer.Option("stitch", help="Residual-branch sites: stitch | error."),
    device: str | None = typer.Option(None, callback=_DEVICE, help="cpu, cuda, ... (default cpu)."),
    threads: int | None = typer.Option(None, min=1, help="torch intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stitch A's front into B's back at a site and print accuracies and the stitching penalty."""
    from intertwiner import checkpoints
    from intertwiner.errors import IntertwinerError
    from intertwiner.stitching import StitchConfig, stitch

    try:
        model_a, meta_a = checkpoints.load(checkpoint_a)
        model_b, _ = checkpoints.load(checkpoint_b)
        splits = checkpoints.data_splits(meta_a, dataset=data, root=data_dir, source=checkpoint_a)
        config = StitchConfig(
            solver=solver,
            epochs=epochs,
            lr=lr,
            bias=bias,
            init_samples=_init_samples(init_samples),
            batch_size=batch_size,
            seed=seed,
            residual=residual,
            device=device,
            num_threads=threads,
            progress=not quiet,
        )
        result = stitch(model_a, model_b, at, layer=layer, data=splits, config=config)
    except (IntertwinerError, ValueError) as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    streams = f" (also stitched the residual stream {', '.join(result.residual_streams)})"
    typer.echo(f"site {result.site}, layer {result.kind}"
               + (f" ({result.solver})" if result.solver else "")
               + (streams if result.residual_streams else ""))  # fmt: skip
    typer.echo(f"test accuracy  A {100 * result.acc_a:.2f}%  B {100 * result.acc_b:.2f}%  "
               f"stitched {100 * result.acc_stitched:.2f}%")  # fmt: skip
    typer.echo(f"penalty        {100 * result.penalty:.2f} points (mean of A and B minus stitched)")
    typer.echo(f"chosen epoch   {result.best_epoch} (validation accuracy "
               f"{100 * result.val_acc:.2f}%), {result.wall_time_s:.1f}s")  # fmt: skip
    if result.sparsity is not None and result.kind.startswith("lasso"):
        typer.echo(f"sparsity       {result.sparsity:.3f}")


# ---- align / interpolate -----------------------------------------------------------------------
def _random_subset(ds, n):
    from intertwiner.data import random_subset

    return random_subset(ds, n)


def _pair_splits(meta_a: dict, data: str | None, data_dir: str | None, checkpoint_a: str):
    from intertwiner import checkpoints

    return checkpoints.data_splits(meta_a, dataset=data, root=data_dir, source=checkpoint_a)


_OPT_METHOD = typer.Option("weights", "--method", help="weights | activations")
_OPT_GROUP = typer.Option(
    "full", "--group", help="full (each site's intertwiner group) | permutation | none"
)


@app.command("align")
def align_cmd(
    checkpoint_a: str = typer.Argument(..., help="Reference model A (.safetensors)."),
    checkpoint_b: str = typer.Argument(..., help="Model B to align to A (.safetensors)."),
    out: str = typer.Option(..., "--out", help="Where to save aligned B (.safetensors)."),
    method: str = _OPT_METHOD,
    group: str = _OPT_GROUP,
    data: str | None = typer.Option(
        None, "--data", help="Dataset for activations (default: the one in A's metadata)."
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    samples: int = typer.Option(4096, help="Training examples streamed for --method activations."),
    seed: int = typer.Option(0, help="Seed of the site order in weight matching."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Align B to A modulo the intertwiner group of every traced site; save aligned B (same
    function as B) and print, per site, B's relative weight distance to A before and after."""
    from intertwiner import checkpoints
    from intertwiner.alignment import align, weight_distance
    from intertwiner.errors import IntertwinerError

    try:
        model_a, meta_a = checkpoints.load(checkpoint_a)
        model_b, meta_b = checkpoints.load(checkpoint_b)
        train = None
        if method == "activations" or data is not None:
            train = _random_subset(
                _pair_splits(meta_a, data, data_dir, checkpoint_a).train, samples
            )
        res = align(
            model_a, model_b, data=train, method=method, group=group, seed=seed,
            progress=not quiet,
        )  # fmt: skip
        before, after = weight_distance(model_a, model_b), weight_distance(model_a, res.model)
        meta = {
            **{k: v for k, v in meta_b.items() if k != "alignment"},
            "alignment": {
                "reference": str(checkpoint_a),
                "source": str(checkpoint_b),
                "method": method,
                "group": group,
                "seed": seed,
                "distance_before": before,
                "distance_after": after,
                "sweeps": res.sweeps,
            },
        }
        checkpoints.save(res.model, out, meta)
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps({**meta["alignment"], "out": out, "seconds": res.seconds,
                               "sites": [vars(r) for r in res.sites]}, indent=2))  # fmt: skip
        return
    typer.echo(res.table())
    typer.echo(f"\nweight distance to A (relative): {before:.4f} -> {after:.4f}  "
               f"({method}, group {group}, {res.sweeps} sweeps, {res.seconds:.2f}s)")  # fmt: skip
    typer.echo(f"saved {out}")


@app.command("interpolate")
def interpolate_cmd(
    checkpoint_a: str = typer.Argument(..., help="Model A (.safetensors)."),
    checkpoint_b: str = typer.Argument(..., help="Model B (.safetensors)."),
    do_align: bool = typer.Option(
        False, "--align/--no-align", help="Align B to A first (and show the unaligned line too)."
    ),
    method: str = _OPT_METHOD,
    group: str = _OPT_GROUP,
    alphas: int = typer.Option(11, help="Evenly spaced points from A (0) to B (1)."),
    reset_bn: bool = typer.Option(
        True, "--reset-bn/--no-reset-bn", help="Re-estimate BatchNorm statistics at each point."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Dataset (default: the one in A's metadata)."
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    samples: int = typer.Option(4096, help="Training examples for BN statistics / activations."),
    eval_samples: int | None = typer.Option(None, help="Test examples to evaluate (default all)."),
    plot: str | None = typer.Option(None, "--plot", help="Save the barrier curves (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Loss and accuracy on the straight line from A to B (test split) and the loss barrier."""
    from intertwiner import checkpoints
    from intertwiner.alignment import align, interpolate, plot_curves
    from intertwiner.errors import IntertwinerError

    try:
        model_a, meta_a = checkpoints.load(checkpoint_a)
        model_b, _ = checkpoints.load(checkpoint_b)
        splits = _pair_splits(meta_a, data, data_dir, checkpoint_a)
        train, test = (
            _random_subset(splits.train, samples),
            _random_subset(splits.test, eval_samples),
        )
        opts = dict(reset_bn=reset_bn, bn_data=train, progress=not quiet)
        curves = [interpolate(model_a, model_b, alphas, test, label="no alignment", **opts)]
        if do_align:
            res = align(model_a, model_b, data=train, method=method, group=group,
                        progress=not quiet)  # fmt: skip
            label = f"aligned ({method}, {group})"
            curves.append(interpolate(model_a, res.model, alphas, test, label=label, **opts))
        if plot:
            plot_curves(curves, plot, title=f"{checkpoint_a} -> {checkpoint_b}")
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in curves], indent=2))
        return
    for c in curves:
        typer.echo(f"{c.label}{' (BN re-estimated)' if c.reset_bn else ''}")
        typer.echo("  alpha   loss     accuracy")
        for a, loss, acc in zip(c.alphas, c.losses, c.accuracies, strict=True):
            typer.echo(f"  {a:5.2f}  {loss:7.4f}  {100 * acc:6.2f}%")
        mid = c.midpoint
        typer.echo(f"  loss barrier {c.barrier:.4f}, accuracy at alpha={mid['alpha']:.2f} "
                   f"{100 * mid['accuracy']:.2f}%")  # fmt: skip
    if plot:
        typer.echo(f"saved {plot}")


# ---- compare -----------------------------------------------------------------------------------
def _compare_input(path: str):
    """A checkpoint (``.safetensors`` with its JSON sidecar) -> (model, metadata); a feature file
    (``.npy``, or ``.safetensors`` without a sidecar: one tensor per layer) -> ({layer: array}, None).
    Never pickle: ``np.load(allow_pickle=False)``."""
    from pathlib import Path

    import numpy as np

    from intertwiner import checkpoints
    from intertwiner.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path} does not exist")
    if p.suffix == ".npy":
        return {"features": np.load(p, allow_pickle=False)}, None
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: compare takes .safetensors checkpoints or feature files, or .npy"
        )
    if p.with_suffix(".json").is_file():
        return checkpoints.load(p)
    from safetensors.torch import load_file

    return load_file(str(p)), None


def _compare_tables(results: dict, two: bool) -> str:
    """Two inputs: a layer x layer table per metric (A's layers down, B's across); more: a
    model x model table per metric and layer pair."""
    lines = []
    for name, res in results.items():
        if two:
            lines.append(f"{name}  (rows: {res.names[0]} layers, columns: {res.names[1]} layers)")
            lines.append("".ljust(16) + "".join(f"{lb[:11]:>12s}" for lb in res.layers))
            for la in res.layers:
                row = [
                    res.matrices.get((la, lb), [[float("nan")] * 2] * 2)[0][1] for lb in res.layers
                ]
                lines.append(f"{la[:15]:16s}" + "".join(f"{v:12.4f}" for v in row))
        else:
            for (la, lb), m in res.matrices.items():
                lines.append(f"{name}  {la}" + ("" if la == lb else f" vs {lb}"))
                lines.append("".ljust(16) + "".join(f"{n[:11]:>12s}" for n in res.names))
                for n, row in zip(res.names, m, strict=True):
                    lines.append(f"{n[:15]:16s}" + "".join(f"{v:12.4f}" for v in row))
        lines.append("")
    return "\n".join(lines)


def _compare_write(results: dict, out: str, two: bool) -> list[str]:
    """compare.json, compare.csv and heatmap PNGs in ``out``; the paths written."""
    import csv

    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, "compare.json"), os.path.join(out, "compare.csv")]
    with open(written[0], "w") as f:
        json.dump({name: res.to_dict() for name, res in results.items()}, f, indent=2)
    with open(written[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "layer_a", "layer_b", "model_a", "model_b", "value"])
        for name, res in results.items():
            for (la, lb), m in res.matrices.items():
                for i, a in enumerate(res.names):
                    for j, b in enumerate(res.names):
                        w.writerow([name, la, lb, a, b, repr(float(m[i, j]))])
    if two:
        import numpy as np

        from intertwiner.metrics import Comparison

        any_res = next(iter(results.values()))
        lay = any_res.layers
        mats = {n: np.array([[r.matrices[(a, b)][0, 1] for b in lay] for a in lay])
                for n, r in results.items()}  # fmt: skip
        comp = Comparison(lay, lay, mats, 0,
                          higher_is_similar={n: r.higher_is_similar for n, r in results.items()})  # fmt: skip
        written.append(os.path.join(out, "compare.png"))
        comp.plot(written[-1])
    else:
        for name, res in results.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            for la in res.layers:
                written.append(
                    os.path.join(out, f"compare_{safe}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', la)}.png")
                )
                res.plot(written[-1], layer=la)
    return written


_ARG_INPUTS = typer.Argument(
    ...,
    help="Checkpoints (.safetensors + .json sidecar), or feature files (.npy, or .safetensors "
    "without a sidecar: one tensor per layer) of shape (N, C, ...).",
)


@app.command("compare")
def compare_cmd(
    inputs: list[str] = _ARG_INPUTS,
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="Comma-separated layers (module names; for feature files, tensor names). Needed for checkpoints.",
    ),
    metrics: str = typer.Option(
        "cka,procrustes_similarity:positive_monomial",
        "--metrics",
        help="Comma-separated metrics, e.g. cka, cka_debiased, group_cka, procrustes_similarity:orthogonal.",
    ),
    cross_layers: bool = typer.Option(
        True,
        "--cross-layers/--same-layer",
        help="Every layer pair, or each layer with itself (more than two inputs).",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Dataset for checkpoints (default: the one in the first checkpoint's metadata).",
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    split: str = typer.Option("test", "--split", help="Inputs to compare on: test | val | train."),
    samples: int = typer.Option(
        1000, "--samples", min=4, help="Inputs to compare on (checkpoints)."
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        callback=_FOLDER,
        help="Folder for compare.json, compare.csv and heatmap PNGs.",
    ),
    device: str | None = typer.Option(
        None, callback=_DEVICE, help="cpu, cuda, ... (default: where the features are)."
    ),
    workers: int = typer.Option(0, min=0, help="Processes for the pairs (0: this one)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Compare checkpoints (layer x layer for two, model x model for more) or saved features with
    representation metrics; print the tables, and with --out write JSON, CSV and heatmaps."""
    from intertwiner.errors import IntertwinerError, InvalidInputError, InvalidOptionError
    from intertwiner.metrics import pairwise

    if len(inputs) < 2:
        raise fail("compare needs at least two inputs")
    names = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    if len(set(names)) != len(names):
        names = list(inputs)
    want = [la.strip() for la in layers.split(",")] if layers else None
    try:
        loaded = [_compare_input(p) for p in inputs]
        models = [m for m, meta in loaded if meta is not None]
        if models and len(models) != len(loaded):
            raise InvalidInputError(
                "compare takes only checkpoints or only feature files, not both"
            )
        kw: dict = {"layers": want, "cross_layers": cross_layers, "names": names,
                    "device": device, "progress": not quiet, "workers": workers}  # fmt: skip
        if models:
            splits = _pair_splits(loaded[0][1], data, data_dir, inputs[0])
            if split not in ("test", "val", "train"):
                raise InvalidOptionError(f"--split {split!r}: choose test, val or train")
            kw.update(data=getattr(splits, split), max_samples=samples)
        items = models or [m for m, _ in loaded]
        results = {}
        for spec in [m.strip() for m in metrics.split(",") if m.strip()]:
            res = pairwise(items, spec, **kw)
            results[res.metric] = res
        written = _compare_write(results, out, len(inputs) == 2) if out else []
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    typer.echo(_compare_tables(results, len(inputs) == 2))
    for r in results.values():
        for note in r.notes:
            typer.echo(f"note: {note}", err=True)
    for w in written:
        typer.echo(f"saved {w}")


if __name__ == "__main__":  # pragma: no cover
    app()
