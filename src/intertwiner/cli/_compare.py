"""``compare``: metrics between checkpoints or saved feature arrays."""

from __future__ import annotations

import json
import os
import re

import typer

from intertwiner.cli._app import (
    _DEVICE,
    _FOLDER,
    _pair_splits,
    app,
    count,
    fail,
)
from intertwiner.errors import InvalidOptionError


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


def _table(title: str, rows: list[str], cols: list[str], value) -> list[str]:
    """A text table wide enough for every label (no name is cut)."""
    left = max(len(r) for r in rows) + 2
    width = max(10, *(len(c) + 2 for c in cols))
    lines = [title, "".ljust(left) + "".join(f"{c:>{width}s}" for c in cols)]
    for r in rows:
        lines.append(f"{r:{left}s}" + "".join(f"{value(r, c):{width}.4f}" for c in cols))
    return lines


def _compare_tables(results: dict, two: bool) -> str:
    """Two inputs: a layer x layer table per metric (A's layers down, B's across); more: a
    model x model table per metric and layer pair."""
    lines = []
    for name, res in results.items():
        if two:
            title = f"{name}  (rows: {res.names[0]} layers, columns: {res.names[1]} layers)"
            lines += _table(title, res.layers, res.layers,
                            lambda la, lb, res=res: res.matrices[(la, lb)][0][1])  # fmt: skip
        else:
            for (la, lb), m in res.matrices.items():
                title = f"{name}  {la}" + ("" if la == lb else f" vs {lb}")
                idx = {n: i for i, n in enumerate(res.names)}
                lines += _table(title, res.names, res.names,
                                lambda a, b, m=m, idx=idx: m[idx[a], idx[b]])  # fmt: skip
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
        0, callback=count(0), help="Processes for the pairs (0: this one)."
    ),
    upsample: bool = typer.Option(
        False,
        "--upsample",
        help="Procrustes metrics: upsample the smaller of two conv maps (nearest neighbour) when "
        "their spatial sizes differ.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Compare checkpoints (layer x layer for two, model x model for more) or saved features with
    representation metrics; print the tables, and with --out write JSON, CSV and heatmaps."""
    from intertwiner.errors import IntertwinerError, InvalidInputError
    from intertwiner.metrics import metric, pairwise

    if len(inputs) < 2:
        raise fail("compare needs at least two inputs")
    names = _labels(inputs)
    want = [la.strip() for la in layers.split(",")] if layers else None
    try:
        loaded = [_compare_input(p) for p in inputs]
        models = [m for m, meta in loaded if meta is not None]
        if models and len(models) != len(loaded):
            raise InvalidInputError(
                "compare takes only checkpoints or only feature files, not both"
            )
        if models and want is None:
            raise InvalidOptionError(
                f"comparing checkpoints needs --layers; {names[0]} has the sites "
                f"{', '.join(_sites(models[0]))}"
            )
        kw: dict = {"layers": want, "cross_layers": cross_layers, "names": names,
                    "device": device, "progress": not quiet, "workers": workers}  # fmt: skip
        if models:
            splits = _pair_splits(loaded[0][1], data, data_dir, inputs[0])
            _note_foreign_data([meta for _, meta in loaded], names, data)
            if split not in ("test", "val", "train"):
                raise InvalidOptionError(f"--split {split!r}: choose test, val or train")
            kw.update(data=getattr(splits, split), max_samples=samples)
        items = models or [m for m, _ in loaded]
        results = {}
        for spec in [m.strip() for m in metrics.split(",") if m.strip()]:
            up = upsample and spec.startswith("procrustes")  # CKA compares inputs: no positions
            res = pairwise(items, metric(spec, upsample=True) if up else spec, **kw)
            results[res.metric] = res
        written = _compare_write(results, out, len(inputs) == 2) if out else []
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    typer.echo(_compare_tables(results, len(inputs) == 2))
    for w in written:
        typer.echo(f"saved {w}")
    notes = list(dict.fromkeys(n for r in results.values() for n in r.notes))
    if notes:  # a table with NaN cells is not a result: say why and exit non-zero
        more = f" (and {len(notes) - 1} more reason(s))" if len(notes) > 1 else ""
        raise fail(f"some values could not be computed (nan above): {notes[0]}{more}")
