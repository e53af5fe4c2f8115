"""``benchmark-measures``: which similarity measure identifies corresponding layers (Kornblith's
test) on a zoo trained here from several seeds."""

from __future__ import annotations

import json
import os

import typer

from intertwiner.cli._app import app, fail


@app.command("benchmark-measures")
def benchmark_measures_cmd(
    seeds: int = typer.Option(5, min=2, help="Models trained from seeds 0..seeds-1."),
    depth: int = typer.Option(8, min=2, help="Hidden layers of each MLP."),
    width: int = typer.Option(64, min=1, help="Neurons per hidden layer."),
    epochs: int = typer.Option(20, min=1, help="Training epochs per model (digits)."),
    inputs: int = typer.Option(500, min=8, help="Training images the layers are compared on."),
    measures: str | None = typer.Option(
        None, "--measures", help="Comma-separated metric specs (default: every measure)."
    ),
    out: str | None = typer.Option(None, "--out", help="Folder for measures.json."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No training progress."),
) -> None:
    """Train an MLP zoo on digits from several seeds and score every similarity measure by how often
    it finds the corresponding layer of another seed's model (Kornblith et al. 2019, Table 2);
    print the ranking with 95% intervals over seeds beside Kornblith's published values."""
    import warnings

    from intertwiner.errors import IntertwinerError
    from intertwiner.experiments import measure_grounding as mg

    try:
        chosen = tuple(m.strip() for m in measures.split(",") if m.strip()) if measures else None
        config = mg.GroundingConfig(seeds=seeds, depth=depth, width=width, epochs=epochs,
                                    n_inputs=inputs, **({"measures": chosen} if chosen else {}))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant layers: documented values
            report = mg.run(config, progress=not quiet)
    except (IntertwinerError, ValueError, KeyError) as e:
        raise fail(e) from None
    accs = ", ".join(f"{a:.3f}" for a in report.test_accuracy)
    typer.echo(f"zoo: {seeds} x mlp {depth}x{width} on digits, test accuracy {accs}")
    typer.echo(report.table())
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "measures.json")
        with open(path, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        typer.echo(f"saved {path}")
