"""``merge``: average two or more checkpoints after aligning them (to their mean by default)."""

from __future__ import annotations

import json

import typer

from intertwiner.cli._align import (
    _OPT_DATA_DIR,
    _OPT_GROUP,
    _OPT_METHOD,
    _OPT_MODEL,
    _OPT_PAIR_DATA,
    _OPT_SAMPLES,
    _OPT_SCALES,
    _random_subset,
)
from intertwiner.cli._app import (
    _FILE,
    _pair_splits,
    app,
    count,
    fail,
    load_checkpoint,
)


def _reference(value: str) -> str | int:
    """``--reference``: ``mean``, ``first`` or a checkpoint's position (0-based)."""
    from intertwiner.errors import InvalidOptionError

    if value in ("mean", "first"):
        return value
    try:
        return int(value)
    except ValueError:
        raise InvalidOptionError(
            f"--reference {value!r}: write mean, first or the position of a checkpoint (0, 1, ...)"
        ) from None


def _weights(value: str | None, n: int) -> list[float] | None:
    from intertwiner.errors import InvalidOptionError

    if value is None:
        return None
    try:
        out = [float(w) for w in value.split(",")]
    except ValueError:
        out = []
    if len(out) != n:
        raise InvalidOptionError(
            f"--weights {value!r}: write one number per checkpoint ({n}), e.g. "
            f"{','.join(['1'] * n)}"
        )
    return out


_ARG_CHECKPOINTS = typer.Argument(
    ..., metavar="A B [C ...]", help="Two or more checkpoints of one architecture."
)


@app.command("merge")
def merge_cmd(
    checkpoints_in: list[str] = _ARG_CHECKPOINTS,
    out: str = typer.Option(
        ..., "--out", callback=_FILE, help="Where to save the merged model (.safetensors)."
    ),
    reference: str = typer.Option(
        "mean",
        "--reference",
        help="mean (each model aligned to the mean of the others, to a fixed point), first, or "
        "the position of the checkpoint to align to (0-based).",
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="One weight per checkpoint, e.g. 1,1,2 (default equal)."
    ),
    method: str = _OPT_METHOD,
    group: str = _OPT_GROUP,
    scales: str = _OPT_SCALES,
    repair: bool = typer.Option(
        False,
        "--repair",
        help="REPAIR the merge: each traced channel gets the weighted mean and "
        "std of the aligned inputs' (measured on --samples training examples).",
    ),
    reset_bn: bool = typer.Option(
        True, "--reset-bn/--no-reset-bn", help="Re-estimate the merge's BatchNorm statistics."
    ),
    max_iter: int = typer.Option(
        20, "--max-iter", callback=count(1), help="Rounds of alignment to the mean at most."
    ),
    report: bool = typer.Option(
        True,
        "--report/--no-report",
        help="Accuracy of the merge, each input and their ensemble on the test split.",
    ),
    zip_k: str | None = typer.Option(
        None,
        "--zip",
        help="Zip A and B instead (ZipIt!: features merged within and across the two models "
        "by correlation on --samples training examples): 'all' sites, or the first K sites "
        "with the rest kept side by side as two heads (0: the ensemble). Takes --repair.",
    ),
    zip_heads: str = typer.Option(
        "average",
        "--zip-heads",
        help="With --zip: average the two heads' outputs (one label set) or concat them "
        "(models trained on different label sets: predict the argmax over both).",
    ),
    data: str | None = _OPT_PAIR_DATA,
    data_dir: str | None = _OPT_DATA_DIR,
    samples: int = _OPT_SAMPLES,
    eval_samples: int | None = typer.Option(
        None, callback=count(1), help="Test examples for the report (default all)."
    ),
    seed: int = typer.Option(0, callback=count(0), help="Seed of the alignment orders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model_spec: str | None = _OPT_MODEL,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Merge checkpoints: align them modulo the intertwiner group of every traced site, average
    the weights, re-estimate BatchNorm statistics on training data (and REPAIR the channels with
    --repair, which re-estimates them too), save the merge.

    With --report (default), prints the test accuracy of the merge, of each input and of their
    ensemble (averaged probabilities).

    With --zip K (or all), zips two checkpoints instead (ZipIt!: the first K sites merged, the
    rest kept side by side as two heads; --repair re-normalises every channel afterwards)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from intertwiner import checkpoints
    from intertwiner.alignment import merge, merge_report
    from intertwiner.errors import IntertwinerError, InvalidOptionError
    from intertwiner.features import iter_batches

    try:
        if len(checkpoints_in) < 2:
            raise InvalidOptionError(
                f"merge needs two or more checkpoints, got {len(checkpoints_in)}"
            )
        ref = _reference(reference)
        w = _weights(weights, len(checkpoints_in))
        loaded = [load_checkpoint(p, model_spec) for p in checkpoints_in]
        models = [m for m, _ in loaded]
        meta_a = loaded[0][1]
        if zip_k is not None:
            _zip_cmd(checkpoints_in, models, meta_a, out, zip_k, zip_heads, repair, report,
                     data, data_dir, samples, eval_samples, as_json, quiet)  # fmt: skip
            return
        has_bn = any(isinstance(m, _BatchNorm) for m in models[0].modules())
        splits = train = None
        options = {}
        measure = repair or (has_bn and reset_bn)
        if method == "activations" or measure or report or data is not None:
            splits = _pair_splits(meta_a, data, data_dir, checkpoints_in[0])
            train = _random_subset(splits.train, samples)
            options["example_input"] = next(iter_batches(train, batch_size=8))
        merged = merge(
            models, w, reference=ref, method=None if group == "none" else method, group=group,
            scales=scales, data=train if method == "activations" else None,
            bn_data=train if measure else None, repair=repair, max_iter=max_iter, seed=seed,
            progress=not quiet, **options,
        )  # fmt: skip
        rep = None
        if report:
            rep = merge_report(merged, models, _random_subset(splits.test, eval_samples))
        info = {
            "inputs": [str(p) for p in checkpoints_in],
            "reference": ref,
            "weights": w,
            "method": method,
            "group": group,
            "scales": scales,
            "repair": repair,
            "reset_bn": reset_bn or repair,
            "seed": seed,
        }
        meta = {**{k: v for k, v in meta_a.items() if k not in ("alignment", "merge")}}
        meta["merge"] = info
        checkpoints.save(merged, out, meta)
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    _echo(info, out, rep, as_json, "merge",
          f"merged by {'averaging only' if group == 'none' else method}, group {group}"
          f"{', REPAIR' if repair else ''}; saved {out}")  # fmt: skip


def _echo(info: dict, out: str, rep, as_json: bool, what: str, last: str) -> None:
    """Print the JSON record, or the report's table and ``last``."""
    if as_json:
        typer.echo(json.dumps({**info, "out": out, "report": rep and rep.to_dict()}, indent=2))
        return
    if rep is not None:
        typer.echo(rep.table())
        typer.echo(f"\n{what} / ensemble accuracy: {rep.fraction_of_ensemble:.3f}")
    typer.echo(last)


def _zip_k(value: str) -> int | None:
    """``--zip``: ``all`` (None) or a number of sites."""
    from intertwiner.errors import InvalidOptionError

    if value == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise InvalidOptionError(f"--zip {value!r}: write all or a number of sites (0, 1, ...)")
    return k


def _zip_cmd(paths, models, meta_a, out, zip_k, heads, repair, report, data, data_dir, samples,
             eval_samples, as_json, quiet) -> None:  # fmt: skip
    """``merge --zip``: ``zip_models`` of two checkpoints, saved as a checkpoint that ``load``
    rebuilds (widened layers recorded) when the inputs are zoo models, else as weights."""
    from intertwiner import checkpoints
    from intertwiner.alignment import merge_report, zip_models
    from intertwiner.errors import InvalidOptionError

    if len(paths) != 2:
        raise InvalidOptionError(f"--zip zips two checkpoints, got {len(paths)}")
    k = _zip_k(zip_k)
    splits = _pair_splits(meta_a, data, data_dir, paths[0])
    train = _random_subset(splits.train, samples)
    res = zip_models(models[0], models[1], train, k=k, heads=heads, repair=repair,
                     progress=not quiet)  # fmt: skip
    rep = None
    if report and heads == "average":  # concatenated heads: the label sets are the user's
        rep = merge_report(res.model, models, _random_subset(splits.test, eval_samples))
    info = {"inputs": [str(p) for p in paths], "zip": {"k": res.k, "depth": res.depth,
            "heads": heads, "repair": repair, "same_model_pairs": [s.within for s in res.sites]}}  # fmt: skip
    meta = {key: v for key, v in meta_a.items() if key not in ("alignment", "merge")}
    meta["merge"] = info
    checkpoints.save(res.model, out, meta)
    _echo(info, out, rep, as_json, "zip",
          f"zipped {res.k} of {res.depth} sites{', REPAIR' if repair else ''}; saved {out}"
          + _zip_load_hint(res.model))  # fmt: skip


def _zip_load_hint(model) -> str:
    """How the zipped checkpoint loads: rebuilt by ``checkpoints.load`` (zoo models, widened
    layers recorded) or as weights into a model the user builds (anything else)."""
    from intertwiner.models import WIDENED_ATTR

    if hasattr(model, WIDENED_ATTR) or hasattr(model, "intertwiner_config"):
        return " (checkpoints.load rebuilds it, wider layers included)"
    return (
        " (a weights checkpoint: the layers after the zipped sites are wider; load it "
        "with checkpoints.load(path, model=...))"
    )
