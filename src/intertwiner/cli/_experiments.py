"""Experiment commands on checkpoints: ``sanity``, ``dissect``, ``stitch``."""

from __future__ import annotations

import json

import typer

from intertwiner.cli._app import (
    _ARCH_HELP,
    _DEVICE,
    _FOLDER,
    _FRACTION,
    _POSITIVE,
    MODEL_HELP,
    _checked,
    _csv,
    _pair_splits,
    _write_json,
    app,
    count,
    fail,
    load_checkpoint,
)
from intertwiner.errors import InvalidOptionError


# ---- sanity / dissect ---------------------------------------------------------------------------
def _sanity_base(checkpoint: str | None, splits, out_dir, base: dict):
    """The model the sanity test transforms: ``checkpoint``, or a base model trained (once;
    reused from ``out_dir`` when valid) with the ``base`` settings."""
    from intertwiner import checkpoints, models
    from intertwiner.training import TrainConfig, train_checkpoint

    if checkpoint:
        return checkpoints.load(checkpoint)[0]
    arch, act = base["arch"], base["act"]
    bn = "-bn" if base["batchnorm"] else ""
    ds = splits.meta.get("name", "data")
    path = out_dir / f"base-{arch}-{act}-{ds}-w{base['width']}{bn}-seed{base['seed']}.safetensors"
    if checkpoints.is_valid(path):
        return checkpoints.load(path)[0]
    cfg = {**splits.model_config(), "activation": act}
    if "batchnorm" in models.defaults(arch):
        cfg["batchnorm"] = base["batchnorm"]
    if "width" in models.defaults(arch):
        cfg["width"] = base["width"]
    tc = TrainConfig(epochs=base["epochs"], batch_size=base["batch_size"], lr=base["lr"],
                     seed=base["seed"], num_threads=base["threads"], progress=not base["quiet"])  # fmt: skip
    return train_checkpoint(arch, cfg, splits, tc, path).model


def _sanity_output(rows: list[dict], out_dir, refit: bool, repeats: int, epochs: int) -> None:
    """Write the rows (and the summary and figure) and print the table."""
    from intertwiner.experiments import sanity as san

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
def sanity(
    arch: str = typer.Option("myrtle_cnn", "--arch", help=_ARCH_HELP),
    activation: str = typer.Option("relu", "--activation", "-a", help="Comma list: relu,sigmoid."),
    data: str = typer.Option("mnist", "--data", help="digits | mnist | concepts | synthetic"),
    sites: str | None = typer.Option(None, "--sites", help="Comma list; default: all but last."),
    kinds: str = typer.Option("group,orthogonal", "--kinds", help="identity,group,orthogonal,.."),
    repeats: int = typer.Option(3, "--repeats", callback=count(1)),
    epochs: int = typer.Option(
        2, "--epochs", callback=count(0), help="Retraining epochs (0: no retraining)."
    ),
    base_epochs: int = typer.Option(
        6, "--base-epochs", callback=count(1), help="Epochs for the base model."
    ),
    width: int = typer.Option(8, "--width", callback=count(1), help="Width of the base model."),
    batchnorm: bool = typer.Option(False, "--batchnorm/--no-batchnorm", help="Paper: none."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Use this trained model."),
    seed: int = typer.Option(
        0, "--seed", callback=count(0), help="Base model, transforms and retraining."
    ),
    lr: float = typer.Option(1e-3, "--lr", callback=_POSITIVE),
    batch_size: int = typer.Option(
        128, "--batch-size", callback=count(1), help="Base training and retraining."
    ),
    threads: int | None = typer.Option(
        None, "--threads", callback=count(1), help="torch CPU threads."
    ),
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

    from intertwiner import data as data_mod
    from intertwiner import models
    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments import sanity as san

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        splits = data_mod.load(data, seed=seed)
        config = san.SanityConfig(
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, num_threads=threads
        )
        for act in [None] if checkpoint else _csv(activation):
            base = dict(arch=arch, act=act, width=width, batchnorm=batchnorm, seed=seed, lr=lr,
                        epochs=base_epochs, batch_size=batch_size, threads=threads, quiet=quiet)  # fmt: skip
            model = _sanity_base(checkpoint, splits, out_dir, base)
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
    _sanity_output(rows, out_dir, refit, repeats, epochs)


@app.command()
def dissect(
    checkpoint: str = typer.Argument(..., help="A model checkpoint (.safetensors)."),
    layer: str = typer.Option(..., "--layer", help="A conv activation site, e.g. block2.act."),
    data: str = typer.Option("concepts", "--data", help="Only concepts (scenes with masks)."),
    n_orthogonal: int = typer.Option(
        3, "--n-orthogonal", callback=count(0), help="Random rotations."
    ),
    powers: str = typer.Option("0,0.1,0.2,0.3,0.5,0.7,1", "--powers", help="Rotation powers."),
    quantile: float = typer.Option(
        0.005, "--quantile", callback=_FRACTION, help="Top fraction that is 'on'."
    ),
    iou_threshold: float = typer.Option(0.04, "--iou-threshold", callback=_FRACTION),
    n_rotations: int = typer.Option(
        4, "--n-rotations", callback=count(1), help="For the label-free statistics."
    ),
    seed: int = typer.Option(0, "--seed", callback=count(0), help="Group element and rotations."),
    out: str | None = typer.Option(
        None, "--out", callback=_FOLDER, help="Folder for JSON and the figure."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    model_spec: str | None = typer.Option(None, "--model", help=MODEL_HELP),
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
        model, meta = load_checkpoint(checkpoint, model_spec)
        config = getattr(model, "intertwiner_config", None) or {}
        if int(config.get("in_channels", 3)) != 3:
            raise InvalidOptionError(
                "the concept scenes are RGB: dissect a model with in_channels=3"
            )
        recorded = meta.get("dataset") == "concepts"
        splits = checkpoints.data_splits(
            meta, dataset=None if recorded else "concepts", source=checkpoint,
            size=int(config.get("input_size", 32)),
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


# ---- stitch -------------------------------------------------------------------------------------
def _init_samples(text: str | None, name: str = "--init-samples") -> int | str | None:
    """``--init-samples``: None, "auto" or a positive int (checked as the option is read)."""
    if text is None or text == "auto":
        return text
    from intertwiner._validate import positive_int

    try:
        number = int(text)
    except ValueError:
        raise InvalidOptionError(
            f"{name} takes a number of inputs (>= 1) or 'auto', got {text!r}"
        ) from None
    return positive_int(number, name)


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
        callback=count(0),
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
        callback=_checked(_init_samples),
        help="Training inputs for the matching / closed-form statistics: N, or auto (stop when "
        "the assignment has converged); default all. Fewer is faster, usually a little worse.",
    ),
    batch_size: int = typer.Option(128, callback=count(1), help="Batch size."),
    data: str | None = typer.Option(
        None, "--data", help="Dataset name (default: the one in A's checkpoint metadata)."
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    seed: int = typer.Option(
        0, callback=count(0), help="Seed of the stitch's init and batch order."
    ),
    residual: str = typer.Option("stitch", help="Residual-branch sites: stitch | error."),
    device: str | None = typer.Option(None, callback=_DEVICE, help="cpu, cuda, ... (default cpu)."),
    threads: int | None = typer.Option(None, callback=count(1), help="torch intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    model_spec: str | None = typer.Option(None, "--model", help=MODEL_HELP),
) -> None:
    """Stitch A's front into B's back at a site and print accuracies and the stitching penalty."""
    from intertwiner.errors import IntertwinerError
    from intertwiner.stitching import StitchConfig, stitch

    try:
        model_a, meta_a = load_checkpoint(checkpoint_a, model_spec)
        model_b, _ = load_checkpoint(checkpoint_b, model_spec)
        splits = _pair_splits(meta_a, data, data_dir, checkpoint_a)
        config = StitchConfig(
            solver=solver,
            epochs=epochs,
            lr=lr,
            bias=bias,
            init_samples=init_samples,
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
