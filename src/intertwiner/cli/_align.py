"""Symmetry commands: ``symmetries`` (trace and verify), ``align``, ``interpolate`` (``merge``
lives in ``_merge``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from intertwiner.cli._app import (
    _FILE,
    MODEL_HELP,
    _pair_splits,
    app,
    count,
    fail,
    load_checkpoint,
    one_of,
)

_OPT_MODEL = typer.Option(None, "--model", help=MODEL_HELP)
# Options of the commands that read two or more checkpoints (interpolate, merge).
_OPT_PAIR_DATA = typer.Option(None, "--data", help="Dataset (default: the one in A's metadata).")
_OPT_DATA_DIR = typer.Option(None, help="Data folder (cifar10).")
_OPT_SAMPLES = typer.Option(
    4096, callback=count(1), help="Training examples for BN statistics / activations."
)


# ---- symmetries ---------------------------------------------------------------------------------
@app.command()
def symmetries(
    checkpoint: str = typer.Argument(..., help="A .safetensors checkpoint written by train/zoo."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    seed: int = typer.Option(
        0, callback=count(0), help="Seed for the random input batch and elements."
    ),
    batch: int = typer.Option(8, callback=count(1), help="Random inputs used to verify each site."),
    model_spec: str | None = _OPT_MODEL,
    input_shape: str | None = typer.Option(
        None,
        "--input-shape",
        help="Shape of one input without the batch axis, e.g. 3,32,32 or 784 (default: from the "
        "checkpoint's config, or a first Linear layer's width).",
    ),
) -> None:
    """Trace a checkpoint's weight-space symmetries and verify each site.

    Errors are relative: max |f(x) - f_g(x)| / max |f(x)| with a random element g at one site,
    in float64 (exactness of the symmetry) and in float32 (round-off at the model's precision).
    Coverage: the share of parameter tensors (and scalars) some site moves, in all and without
    the output side (the head's bias), then what no site moves, per module, and why.
    """
    import torch

    from intertwiner.errors import IntertwinerError
    from intertwiner.symmetry import check, random_elements, site_errors, trace

    try:
        model, meta = load_checkpoint(checkpoint, model_spec)
        model = model.float()
        x = _random_input(model, input_shape, batch, seed)
        spec = trace(model, x)
        err32 = site_errors(model, spec, x, generator=torch.Generator().manual_seed(seed))
        m64, x64 = model.double(), x.double()
        err64 = site_errors(m64, spec, x64, generator=torch.Generator().manual_seed(seed))
        elements = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = float(m64.eval()(x64).abs().max()) or 1.0
        total64 = check(m64, spec, x64, elements=elements) / ref
        cov = spec.coverage(m64, x64)
    except IntertwinerError as e:
        raise fail(e) from None
    if as_json:
        out = spec.to_dict()
        for s in out["sites"]:
            s["error_float64"], s["error_float32"] = err64[s["name"]], err32[s["name"]]
        out["all_sites_error_float64"] = total64
        out["coverage"] = cov.to_dict()
        out["checkpoint"] = checkpoint
        typer.echo(json.dumps(out, indent=2))
        return
    arch = meta.get("arch") or meta.get("model_class") or type(model).__name__
    act = f" ({meta['activation']})" if meta.get("activation") else ""
    typer.echo(f"{checkpoint}: {arch}{act}, {len(spec.sites)} sites")
    typer.echo(spec.table(errors=err64, error_label="err f64"))
    typer.echo(
        f"\nerr f64: relative output change with a random element at one site (float64); "
        f"float32 max {max(err32.values(), default=0.0):.1e}; all sites at once (float64) "
        f"{total64:.1e}."
    )
    typer.echo(cov.summary())


def _random_input(model, input_shape: str | None, batch: int, seed: int):
    """A random batch for ``symmetries``: ``--input-shape``, else the zoo config's input, else
    ``(batch, in_features)`` of a first Linear layer; else say to pass ``--input-shape``."""
    import torch

    from intertwiner import models
    from intertwiner.errors import InvalidOptionError

    if input_shape is not None:
        try:
            dims = tuple(int(d) for d in input_shape.split(","))
        except ValueError:
            dims = ()
        if not dims or min(dims) < 1:
            raise InvalidOptionError(
                f"--input-shape {input_shape!r}: write the sizes of one input, e.g. 3,32,32 or 784"
            )
        return torch.randn((batch, *dims), generator=torch.Generator().manual_seed(seed))
    x = models.example_input(model, batch=batch, seed=seed)
    if x is None:
        raise InvalidOptionError(
            f"cannot tell the input of {type(model).__name__}: pass --input-shape (one input "
            "without the batch axis, e.g. 3,32,32)"
        )
    return x.float()


# ---- align / interpolate -----------------------------------------------------------------------
def _random_subset(ds, n):
    from intertwiner.data import random_subset

    return random_subset(ds, n)


_OPT_METHOD = typer.Option(
    "weights", "--method", callback=one_of("weights", "activations"), help="weights | activations"
)
_OPT_GROUP = typer.Option(
    "full",
    "--group",
    callback=one_of("full", "permutation", "none"),
    help="full (each site's intertwiner group) | permutation | none",
)

_OPT_SCALES = typer.Option(
    "balanced",
    "--scales",
    callback=one_of("balanced", "unit_norm", "distance"),
    help="ReLU-type scales with --group full: balanced (least-norm representatives) | unit_norm "
    "| distance (scales that minimise the weight distance; worse merges)",
)


@app.command("align")
def align_cmd(
    checkpoint_a: str = typer.Argument(..., help="Reference model A (.safetensors)."),
    checkpoint_b: str = typer.Argument(..., help="Model B to align to A (.safetensors)."),
    out: str = typer.Option(
        ..., "--out", callback=_FILE, help="Where to save aligned B (.safetensors)."
    ),
    method: str = _OPT_METHOD,
    group: str = _OPT_GROUP,
    scales: str = _OPT_SCALES,
    data: str | None = typer.Option(
        None, "--data", help="Dataset for activations (default: the one in A's metadata)."
    ),
    data_dir: str | None = typer.Option(None, help="Data folder (cifar10)."),
    samples: int = typer.Option(
        4096, callback=count(1), help="Training examples streamed for --method activations."
    ),
    seed: int = typer.Option(
        0, callback=count(0), help="Seed of the site order in weight matching."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model_spec: str | None = _OPT_MODEL,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Align B to A modulo the intertwiner group of every traced site and save aligned B.

    Aligned B computes the same function as B; the table gives, per site, B's relative weight
    distance to A before and after."""
    from intertwiner import checkpoints
    from intertwiner.alignment import align, weight_distance
    from intertwiner.errors import IntertwinerError

    try:
        model_a, meta_a = load_checkpoint(checkpoint_a, model_spec)
        model_b, meta_b = load_checkpoint(checkpoint_b, model_spec)
        train = None
        if method == "activations" or data is not None:
            train = _random_subset(
                _pair_splits(meta_a, data, data_dir, checkpoint_a).train, samples
            )
        res = align(
            model_a, model_b, data=train, method=method, group=group, seed=seed,
            progress=not quiet, scales=scales,
        )  # fmt: skip
        before, after = weight_distance(model_a, model_b), weight_distance(model_a, res.model)
        meta = {
            **{k: v for k, v in meta_b.items() if k != "alignment"},
            "alignment": {
                "reference": str(checkpoint_a),
                "source": str(checkpoint_b),
                "method": method,
                "group": group,
                "scales": scales,
                "seed": seed,
                "distance_before": before,
                "distance_after": after,
                "sweeps": res.sweeps,
                **({} if res.selection is None else {"selection": vars(res.selection)}),
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
    sweeps = f"{res.sweeps} sweep{'' if res.sweeps == 1 else 's'}"
    typer.echo(f"\nweight distance to A (relative): {before:.4f} -> {after:.4f}  "
               f"({method}, group {group}, {sweeps}, {res.seconds:.2f}s)")  # fmt: skip
    if res.selection is not None:
        typer.echo(str(res.selection))
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
    scales: str = _OPT_SCALES,
    alphas: int = typer.Option(
        11, callback=count(2), help="Evenly spaced points from A (0) to B (1)."
    ),
    reset_bn: bool = typer.Option(
        True, "--reset-bn/--no-reset-bn", help="Re-estimate BatchNorm statistics at each point."
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="REPAIR each point: every pre-activation channel gets the interpolated mean and std "
        "of A's and B's on the --samples training examples.",
    ),
    data: str | None = _OPT_PAIR_DATA,
    data_dir: str | None = _OPT_DATA_DIR,
    samples: int = _OPT_SAMPLES,
    eval_samples: int | None = typer.Option(
        None, callback=count(1), help="Test examples to evaluate (default all)."
    ),
    plot: str | None = typer.Option(
        None, "--plot", callback=_FILE, help="Save the barrier curves (PNG)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model_spec: str | None = _OPT_MODEL,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Loss and accuracy on the straight line from A to B (test split) and the loss barrier."""
    from intertwiner.alignment import align, interpolate, plot_curves
    from intertwiner.errors import IntertwinerError

    try:
        model_a, meta_a = load_checkpoint(checkpoint_a, model_spec)
        model_b, _ = load_checkpoint(checkpoint_b, model_spec)
        splits = _pair_splits(meta_a, data, data_dir, checkpoint_a)
        train, test = (
            _random_subset(splits.train, samples),
            _random_subset(splits.test, eval_samples),
        )
        opts = dict(reset_bn=reset_bn, repair=repair, bn_data=train, progress=not quiet)
        curves = [interpolate(model_a, model_b, alphas, test, label="no alignment", **opts)]
        if do_align:
            res = align(model_a, model_b, data=train, method=method, group=group,
                        progress=not quiet, scales=scales, select_repair=repair)  # fmt: skip
            label = f"aligned ({method}, {group})"
            curves.append(interpolate(model_a, res.model, alphas, test, label=label, **opts))
        if plot:
            names = [Path(p).with_suffix("").name for p in (checkpoint_a, checkpoint_b)]
            plot_curves(curves, plot, title=f"{names[0]} -> {names[1]}")
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in curves], indent=2))
        return
    for c in curves:
        notes = ", ".join(
            n for n, on in (("BN re-estimated", c.reset_bn), ("REPAIR", repair)) if on
        )
        typer.echo(f"{c.label} ({notes})" if notes else c.label)
        typer.echo("  alpha   loss     accuracy")
        for a, loss, acc in zip(c.alphas, c.losses, c.accuracies, strict=True):
            typer.echo(f"  {a:5.2f}  {loss:7.4f}  {100 * acc:6.2f}%")
        mid = c.midpoint
        typer.echo(f"  loss barrier {c.barrier:.4f}, accuracy at alpha={mid['alpha']:.2f} "
                   f"{100 * mid['accuracy']:.2f}%")  # fmt: skip
    if plot:
        typer.echo(f"saved {plot}")
