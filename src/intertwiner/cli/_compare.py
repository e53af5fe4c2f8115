"""``compare``: metrics between checkpoints or saved feature arrays."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import typer

from intertwiner.cli._app import (
    _DEVICE,
    _FOLDER,
    MODEL_HELP,
    _pair_splits,
    app,
    count,
    fail,
    load_checkpoint,
)
from intertwiner.errors import InvalidOptionError


# ---- compare -----------------------------------------------------------------------------------
def _compare_input(path: str, model_spec: str | None = None):
    """A checkpoint (``.safetensors`` with its JSON sidecar) -> (model, metadata); a feature file
    (``.npy``, or ``.safetensors`` without a sidecar: one tensor per layer) -> ({layer: array}, None).
    Never pickle: ``np.load(allow_pickle=False)``."""
    from pathlib import Path

    import numpy as np

    from intertwiner.errors import CheckpointError, InvalidInputError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path} does not exist")
    if p.suffix == ".npy":
        try:
            return {"features": np.load(p, allow_pickle=False)}, None
        except ValueError as e:  # a pickled (object) array: never unpickled here
            raise InvalidInputError(
                f"{path} holds a pickled object array ({e}); save plain numbers, e.g. "
                "np.save(path, np.asarray(features, dtype=np.float32))"
            ) from None
    if p.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: compare takes .safetensors checkpoints or feature files, or .npy"
        )
    if p.with_suffix(".json").is_file():
        return load_checkpoint(str(p), model_spec)
    from safetensors.torch import load_file

    return load_file(str(p)), None


def _labels(paths: list[str]) -> list[str]:
    """Short, distinct labels for the inputs: the file names without extension, with as many
    parent folders as it takes to tell them apart (never a whole absolute path)."""
    from pathlib import PurePath

    parts = [PurePath(p).with_suffix("").parts for p in paths]
    for depth in range(1, max(len(q) for q in parts) + 1):
        labels = ["/".join(q[-depth:]) for q in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(paths)  # the same file twice: nothing shorter tells them apart


def _table(title: str, rows: list[str], cols: list[str], m) -> list[str]:
    """A text table of ``m[i][j]`` wide enough for every label (no name is cut)."""
    left = max(len(r) for r in rows) + 2
    width = max(10, *(len(c) + 2 for c in cols))
    lines = [title, "".ljust(left) + "".join(f"{c:>{width}s}" for c in cols)]
    for i, r in enumerate(rows):
        lines.append(
            f"{r:{left}s}" + "".join(f"{float(m[i][j]):{width}.4f}" for j in range(len(cols)))
        )
    return lines


def _compare_tables(results, names: list[str]) -> str:
    """Two inputs (a ``Comparison``): a layer x layer table per metric, A's layers down and B's
    across; more (``{metric: Pairwise}``): a model x model table per metric and layer pair."""
    lines = []
    if isinstance(results, Mapping):
        for name, res in results.items():
            for (la, lb), m in res.matrices.items():
                title = f"{name}  {la}" + ("" if la == lb else f" vs {lb}")
                lines += [*_table(title, res.names, res.names, m), ""]
    else:
        for name, m in results.matrices.items():
            title = f"{name}  (rows: {names[0]} layers, columns: {names[1]} layers)"
            lines += [*_table(title, results.layers_a, results.layers_b, m), ""]
    return "\n".join(lines)


def _compare_write(results, names: list[str], out: str) -> list[str]:
    """compare.json, compare.csv and heatmap PNGs in ``out``; the paths written."""
    import csv

    from intertwiner import _atomic

    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, "compare.json"), os.path.join(out, "compare.csv")]
    rows = []  # metric, layer_a, layer_b, model_a, model_b, value
    if isinstance(results, Mapping):
        doc = {name: res.to_dict() for name, res in results.items()}
        for name, res in results.items():
            for (la, lb), m in res.matrices.items():
                for i, a in enumerate(res.names):
                    rows += [[name, la, lb, a, b, m[i, j]] for j, b in enumerate(res.names)]
    else:
        doc = {**results.to_dict(), "model_a": names[0], "model_b": names[1]}
        for name, m in results.matrices.items():
            for i, la in enumerate(results.layers_a):
                rows += [[name, la, lb, *names, m[i, j]] for j, lb in enumerate(results.layers_b)]
    _atomic.write_text(written[0], json.dumps(doc, indent=2))
    with open(written[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "layer_a", "layer_b", "model_a", "model_b", "value"])
        w.writerows([*r[:5], repr(float(r[5]))] for r in rows)
    if not isinstance(results, Mapping):
        results.names = (names[0], names[1])
        written.append(os.path.join(out, "compare.png"))
        results.plot(written[-1])
        return written
    for name, res in results.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        for la in res.layers:
            written.append(
                os.path.join(out, f"compare_{safe}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', la)}.png")
            )
            res.plot(written[-1], layer=la)
    return written


def _layer_lists(layers: list[str] | None, n: int) -> list[list[str]] | None:
    """``--layers`` given once (the same layers in every input) or once per input, in order."""
    if not layers:
        return None
    lists = [[t.strip() for t in text.split(",") if t.strip()] for text in layers]
    if len(lists) == 1:
        return lists * n
    if len(lists) != n:
        raise InvalidOptionError(
            f"--layers given {len(lists)} times for {n} inputs; give it once (the same layers "
            "in every input) or once per input, in the order of the inputs"
        )
    if n > 2 and len({len(x) for x in lists}) > 1:
        raise InvalidOptionError(
            "with more than two inputs, every --layers must name as many layers: they are "
            "paired in order (the first of each input, the second, ...)"
        )
    return lists


def _feature_layers(loaded: list[dict], lists: list[list[str]] | None) -> list[list[str]]:
    """The layers of each feature file: as asked; else, for two files, all of each (every one
    against every one), for more the layers they all hold under the same names."""
    if lists is None and len(loaded) == 2:
        lists = [list(feats) for feats in loaded]
    elif lists is None:
        if any(set(feats) != set(loaded[0]) for feats in loaded):
            raise InvalidOptionError(
                f"the feature files hold different layers ({'; '.join(map(str, map(list, loaded)))}"
                "); pass --layers once (names they all hold) or once per input (paired in order)"
            )
        lists = [list(loaded[0])] * len(loaded)
    for feats, want in zip(loaded, lists, strict=True):
        missing = [la for la in want if la not in feats]
        if missing:
            raise InvalidOptionError(f"feature file lacks layers {missing}; it has {list(feats)}")
    return lists


def _specs(metrics: str, upsample: bool) -> list:
    """The metrics asked for; ``--upsample`` goes to the Procrustes ones (CKA compares inputs,
    not positions)."""
    from intertwiner.metrics import metric

    specs = [m.strip() for m in metrics.split(",") if m.strip()]
    if not specs:
        raise InvalidOptionError("--metrics names no metric; e.g. --metrics cka")
    return [metric(s, upsample=True) if upsample and s.startswith("procrustes") else metric(s)
            for s in specs]  # fmt: skip


def _two_features(feats: list[dict], lists: list[list[str]], metrics: list):
    """A ``Comparison`` of two feature files: every layer of A against every layer of B (each
    cell once; a cell that cannot be computed is NaN with a note)."""
    import numpy as np

    from intertwiner.errors import IntertwinerError
    from intertwiner.metrics import Comparison

    (fa, fb), (la, lb) = feats, lists
    matrices, notes = {}, []
    for m in metrics:
        out = np.full((len(la), len(lb)), np.nan)
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                try:
                    out[i, j] = m(fa[a], fb[b])
                except IntertwinerError as e:
                    notes.append(f"{m.name} {a} vs {b}: {e}")
        matrices[m.name] = out
    return Comparison(
        la, lb, matrices, int(np.shape(fa[la[0]])[0]),
        invariant_to={m.name: list(m.invariant_to) for m in metrics},
        higher_is_similar={m.name: m.higher_is_similar for m in metrics},
        notes=notes,
        value_range={m.name: tuple(m.value_range) for m in metrics},
    )  # fmt: skip


def _common_keys(sets: list[dict], lists: list[list[str]]) -> tuple[list[dict], list[str]]:
    """Feature sets keyed alike for ``pairwise``: the k-th layer of every input under one label
    (its name, or the names joined with '|' where inputs name it differently)."""
    labels = ["|".join(dict.fromkeys(x[k] for x in lists)) for k in range(len(lists[0]))]
    return [{lab: s[la] for lab, la in zip(labels, x, strict=True)}
            for s, x in zip(sets, lists, strict=True)], labels  # fmt: skip


def _sites(model) -> list[str]:
    """The activation sites of a checkpoint's model, as ``--layers`` takes them."""
    from intertwiner import models

    return list(models.sites(model))


def _note_foreign_data(metas: list[dict], names: list[str], data: str | None) -> None:
    """Say so when the inputs are not the checkpoints' own data: ``--data`` other than what a
    checkpoint was trained on, or checkpoints trained on different datasets (the first one's is
    used). Representations on foreign inputs are a legitimate probe, but not the default one."""
    used = data or metas[0].get("dataset")
    foreign = [f"{n} ({m.get('dataset')})" for n, m in zip(names, metas, strict=True)
               if m.get("dataset") and m.get("dataset") != used]  # fmt: skip
    if foreign:
        typer.echo(
            f"note: comparing on {used}, which is not the training data of {', '.join(foreign)}",
            err=True,
        )


_ARG_INPUTS = typer.Argument(
    ...,
    help="Checkpoints (.safetensors + .json sidecar), or feature files (.npy, or .safetensors "
    "without a sidecar: one tensor per layer) of shape (N, C, ...).",
)


_OPT_LAYERS = typer.Option(
    None,
    "--layers",
    help="Comma-separated layers (module names, e.g. the sites `intertwiner symmetries` "
    "lists; for feature files, tensor names). Needed for checkpoints. Once: the same layers "
    "in every input; once per input: each input's own (e.g. an MLP's act1 against a CNN's "
    "block4.act).",
)


@app.command("compare")
def compare_cmd(
    inputs: list[str] = _ARG_INPUTS,
    layers: list[str] | None = _OPT_LAYERS,
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
        1000, "--samples", callback=count(4), help="Inputs to compare on (checkpoints)."
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
    workers: int = typer.Option(
        0, callback=count(0), help="Processes for the pairs of more than two inputs (0: this one)."
    ),
    upsample: bool = typer.Option(
        False,
        "--upsample",
        help="Procrustes metrics: upsample the smaller of two conv maps (nearest neighbour) when "
        "their spatial sizes differ.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    model_spec: str | None = typer.Option(None, "--model", help=MODEL_HELP),
) -> None:
    """Compare checkpoints or saved features with representation metrics.

    Two inputs: a layer x layer table per metric; more: a model x model table per metric and layer
    pair. With --out: JSON, CSV and heatmaps."""
    from intertwiner.errors import IntertwinerError, InvalidInputError
    from intertwiner.metrics.pairwise import check_rows

    if len(inputs) < 2:
        raise fail("compare needs at least two inputs")
    names = _labels(inputs)
    try:
        lists = _layer_lists(layers, len(inputs))
        metric_list = _specs(metrics, upsample)
        loaded = [_compare_input(p, model_spec) for p in inputs]
        models = [m for m, meta in loaded if meta is not None]
        if models and len(models) != len(loaded):
            raise InvalidInputError(
                "compare takes only checkpoints or only feature files, not both"
            )
        if models:
            if lists is None:
                raise InvalidOptionError(
                    f"comparing checkpoints needs --layers; {names[0]} has the sites "
                    f"{', '.join(_sites(models[0]))}"
                )
            if split not in ("test", "val", "train"):
                raise InvalidOptionError(f"--split {split!r}: choose test, val or train")
            inputs_data = getattr(_pair_splits(loaded[0][1], data, data_dir, inputs[0]), split)
            _note_foreign_data([meta for _, meta in loaded], names, data)
            results = _run_models(models, lists, metric_list, inputs_data, names, samples, device,
                                  cross_layers, workers, quiet)  # fmt: skip
        else:
            feats = [m for m, _ in loaded]
            lists = _feature_layers(feats, lists)
            check_rows(dict(zip(names, feats, strict=True)))
            if len(feats) == 2:
                results = _two_features(feats, lists, metric_list)
            else:
                sets, labels = _common_keys(feats, lists)
                results = _pairwise(sets, labels, metric_list, names, device, cross_layers,
                                    workers, quiet)  # fmt: skip
        written = _compare_write(results, names, out) if out else []
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    typer.echo(_compare_tables(results, names))
    for w in written:
        typer.echo(f"saved {w}")
    all_notes = results.notes if not isinstance(results, Mapping) else [
        n for r in results.values() for n in r.notes]  # fmt: skip
    notes = list(dict.fromkeys(all_notes))
    if notes:  # a table with NaN cells is not a result: say why and exit non-zero
        more = f" (and {len(notes) - 1} more reason(s))" if len(notes) > 1 else ""
        raise fail(f"some values could not be computed (nan above): {notes[0]}{more}")


def _pairwise(sets, labels, metric_list, names, device, cross_layers, workers, quiet) -> dict:
    """``{metric name: Pairwise}`` of K feature sets (each set prepared once per metric)."""
    from intertwiner.metrics import pairwise

    kw = {"layers": labels, "cross_layers": cross_layers, "names": names, "device": device,
          "progress": not quiet, "workers": workers}  # fmt: skip
    return {m.name: pairwise(sets, m, **kw) for m in metric_list}


def _run_models(models, lists, metric_list, data, names, samples, device, cross_layers, workers,
                quiet):  # fmt: skip
    """Two checkpoints: ``metrics.compare`` (A's layers against B's, every metric from one pass
    over the data); more: each model run once at its layers, then ``pairwise`` per metric."""
    from intertwiner.features import capture
    from intertwiner.metrics import compare

    if len(models) == 2:
        return compare(*models, data, *lists, metric_list, device=device, progress=not quiet,
                       max_samples=samples)  # fmt: skip
    sets = [capture(m, data, x, device=device, max_samples=samples, progress=not quiet)
            for m, x in zip(models, lists, strict=True)]  # fmt: skip
    sets, labels = _common_keys(sets, lists)
    return _pairwise(sets, labels, metric_list, names, device, cross_layers, workers, quiet)
