"""``benchmark-measures``: which similarity measure to trust, by four grounding tests (layer
identification, specificity to a random-label model, monotonicity over depth, agreement with the
models' predictions) on a zoo trained here from several seeds (MLPs on digits, or Kornblith et
al.'s setting: plain 10-layer CNNs on MNIST, ``--zoo cnn``)."""

from __future__ import annotations

import json
import os

import typer

from intertwiner import _atomic
from intertwiner.cli._app import _FOLDER, app, fail


@app.command("benchmark-measures")
def benchmark_measures_cmd(
    zoo: str = typer.Option(
        "mlp",
        "--zoo",
        help="mlp (digits, 8x64) or cnn (plain 10-layer CNNs on MNIST, Kornblith's "
        "layer-identification setting).",
    ),
    seeds: int = typer.Option(5, min=2, help="Models trained from seeds 0..seeds-1."),
    depth: int | None = typer.Option(None, min=2, help="Hidden layers (mlp 8, cnn 10)."),
    width: int | None = typer.Option(None, min=1, help="Neurons/channels (mlp 64, cnn 16)."),
    epochs: int | None = typer.Option(None, min=1, help="Training epochs (mlp 20, cnn 6)."),
    inputs: int | None = typer.Option(
        None, min=8, help="Training images the layers are compared on (mlp 300, cnn 200)."
    ),
    measures: str | None = typer.Option(
        None, "--measures", help="Comma-separated metric specs (default: every measure)."
    ),
    random_labels: int = typer.Option(
        2, "--random-labels", min=0, help="Models trained on permuted labels (specificity test)."
    ),
    tests: str | None = typer.Option(
        None, "--tests", help="Comma-separated tests (default: all four; see --help text)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A tiny zoo (3 seeds, 3x16, 2 epochs, 100 inputs): a smoke run."
    ),
    out: str | None = typer.Option(
        None, "--out", callback=_FOLDER, help="Folder for measures.json (checked before training)."
    ),
    cache: str | None = typer.Option(
        None,
        "--cache",
        help="Folder of trained zoo checkpoints, reused by later runs "
        "(default: $XDG_CACHE_HOME or ~/.cache, /intertwiner/grounding).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Train every model, save nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No training progress."),
) -> None:
    """Train an MLP zoo on digits from several seeds (and models on permuted labels) and score every
    similarity measure in four tests: layer identification (Kornblith et al. 2019, Table 2: does
    it find the corresponding layer of another seed's model), specificity (are seed pairs more
    similar than seed vs random-label pairs), monotonicity (does similarity to the first layer
    fall with depth) and prediction (does similarity of the last hidden layers rank model pairs
    as their agreement on test images does). Print each score with a 95% interval over seeds and
    the ranking, beside Kornblith's published values."""
    import warnings

    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments import measure_grounding as mg

    try:
        chosen = tuple(m.strip() for m in measures.split(",") if m.strip()) if measures else None
        picked = tuple(t.strip() for t in tests.split(",") if t.strip()) if tests else None
        sizes = dict(seeds=seeds, depth=depth, width=width, epochs=epochs, n_inputs=inputs,
                     random_labels=random_labels)  # fmt: skip
        sizes = {k: v for k, v in sizes.items() if v is not None}  # None: the zoo's default
        if quick:
            sizes.update(mg.QUICK_CNN if zoo == "cnn" else mg.QUICK)
        config = mg.GroundingConfig.for_zoo(zoo, **sizes,
                                            **({"measures": chosen} if chosen else {}),
                                            **({"tests": picked} if picked else {}))  # fmt: skip
        folder = None if no_cache else (cache or mg.default_cache())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant layers: documented values
            report = mg.run(config, progress=not quiet, cache=folder)
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    accs = ", ".join(f"{a:.3f}" for a in report.test_accuracy)
    rand = ", ".join(f"{a:.3f}" for a in report.random_label_accuracy)
    c = report.config
    arch, dataset = mg.ZOOS[c.zoo]["arch"], mg.ZOOS[c.zoo]["data"]
    typer.echo(f"zoo: {c.seeds} x {arch} {c.depth}x{c.width} on {dataset}, test accuracy {accs}"
               + (f"; {c.random_labels} on permuted labels, test accuracy {rand}" if rand else ""))  # fmt: skip
    typer.echo(report.table())
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "measures.json")
        _atomic.write_text(path, json.dumps(report.to_dict(), indent=2))
        typer.echo(f"saved {path}")
