"""The ``intertwiner`` command line (typer).

Each command is a thin wrapper: parse options, call the library, print a table or JSON. Heavy
imports happen inside the commands so that ``intertwiner --help`` is fast.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symmetries of neural networks: intertwiner groups, weight-space symmetries, "
    "representation metrics modulo symmetry, model stitching.",
)


@app.callback()
def _main() -> None:
    """intertwiner: symmetries of deep learning models and their internal representations."""


# ---- groups ------------------------------------------------------------------------------------
@app.command()
def groups(
    activation: Optional[str] = typer.Option(  # noqa: UP007 (typer needs Optional on py3.10)
        None, "--activation", "-a", help="Print one row: an activation name such as relu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trials: int = typer.Option(16, help="Sampled group elements per verification."),
) -> None:
    """Print the intertwiner group of every known activation, verified and rediscovered."""
    from intertwiner.groups.table import group_table, format_table

    rows = group_table([activation] if activation else None, trials=trials)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))


if __name__ == "__main__":  # pragma: no cover
    app()
