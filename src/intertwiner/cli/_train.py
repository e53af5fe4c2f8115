"""Commands that make models: ``groups`` (the activation table), ``train``, ``zoo``."""

from __future__ import annotations

import json

import typer

from intertwiner.cli._app import (
    _ARCH_HELP,
    _FOLDER,
    _FRACTION,
    _NONNEGATIVE,
    _POSITIVE,
    _checked,
    _seeds,
    app,
    check_data_dir,
    count,
    fail,
)
from intertwiner.errors import InvalidOptionError


# ---- groups ------------------------------------------------------------------------------------
@app.command()
def groups(
    activation: str | None = typer.Option(
        None, "--activation", "-a", help="Print one row: an activation name such as relu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trials: int = typer.Option(
        16, callback=count(1), help="Sampled group elements per verification."
    ),
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
        check_data_dir(data, data_dir)
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


# Options shared by `train` and `zoo` (typer reads each as a default value).
_OPT_ACTIVATION = typer.Option(None, "--activation", "-a", help="e.g. relu, tanh.")
_OPT_DATA = typer.Option("mnist", "--data", help="mnist | digits | concepts | synthetic | cifar10")
_OPT_DATA_DIR = typer.Option(None, "--data-dir", help="Has cifar-10-batches-py/.")
_OPT_SPLIT_SEED = typer.Option(
    0, "--split-seed", callback=count(0), help="Which examples form validation."
)
_OPT_VAL_FRACTION = typer.Option(0.1, "--val-fraction", callback=_FRACTION)
_OPT_AUGMENT = typer.Option(False, "--augment/--no-augment", help="Flip/translate train.")
_OPT_WIDTH = typer.Option(
    None,
    "--width",
    callback=count(1),
    help="Channels of the first stage, a count, not a multiplier (myrtle_cnn, resnet: "
    "later stages double it; vit: the embedding dim).",
)
_OPT_MODEL_CONFIG = typer.Option(None, "--model-config", help="JSON of build() keys.")
_OPT_EPOCHS = typer.Option(5, "--epochs", callback=count(1))
_OPT_BATCH_SIZE = typer.Option(128, "--batch-size", callback=count(1))
_OPT_OPTIMIZER = typer.Option("adam", "--optimizer", help="adam | sgd")
_OPT_LR = typer.Option(1e-3, "--lr", callback=_POSITIVE)
_OPT_WEIGHT_DECAY = typer.Option(1e-4, "--weight-decay", callback=_NONNEGATIVE)
_OPT_SCHEDULE = typer.Option("step", "--schedule", help="none | step | cosine")
_OPT_THREADS = typer.Option(None, "--threads", callback=count(1), help="torch CPU threads.")


@app.command()
def train(
    arch: str = typer.Option(..., "--arch", help=_ARCH_HELP),
    activation: str | None = _OPT_ACTIVATION,
    data: str = _OPT_DATA,
    data_dir: str | None = _OPT_DATA_DIR,
    seed: int = typer.Option(
        0, "--seed", callback=count(0), help="Initial weights and batch order."
    ),
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
    """Train one model into --out.

    Saved as {arch}-{activation}-{dataset}-seed{seed}.safetensors with its .json sidecar."""
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
        path = Path(out) / zoo_filename(arch, act, seed, splits.meta.get("name"))
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
