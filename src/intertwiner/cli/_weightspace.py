"""Weight-space commands: ``canonicalize``, ``fingerprint``, ``permutation-spec``."""

from __future__ import annotations

import json

import typer

from intertwiner.cli._app import _write_json, app, fail


def _load_traced(checkpoint: str, batch: int = 4, seed: int = 0):
    """``(model, metadata, example input, spec)`` of a checkpoint (input shaped from its config)."""
    import torch

    from intertwiner.checkpoints import load
    from intertwiner.symmetry import trace

    model, meta = load(checkpoint)
    config = meta.get("config", {})
    size = int(config.get("input_size", 32))
    shape = (batch, int(config.get("in_channels", 3)), size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x = x.to(next(model.parameters()).dtype)
    return model, meta, x, trace(model, x)


@app.command("canonicalize")
def canonicalize_cmd(
    checkpoint: str = typer.Argument(..., help="A .safetensors checkpoint written by train/zoo."),
    out: str = typer.Option(..., "--out", help="Where to save the canonical model (.safetensors)."),
    strict: bool = typer.Option(False, "--strict", help="Fail if a site is not canonicalised."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Save the representative of the checkpoint's orbit under its traced group (same function;
    models that differ by a symmetry get the same weights) and print each site's status."""
    from intertwiner import checkpoints
    from intertwiner.errors import IntertwinerError
    from intertwiner.symmetry import canonicalize

    try:
        if not out.endswith(".safetensors"):
            raise fail(f"--out must end in .safetensors, got {out}")
        model, meta, x, spec = _load_traced(checkpoint)
        res = canonicalize(model, spec, x, strict=strict)
        record = {
            "source": str(checkpoint),
            "not_canonical": res.not_canonical,
            "function_error": res.error,
        }
        checkpoints.save(res.model, out, {**meta, "canonical": record})
    except (IntertwinerError, ValueError, KeyError, OSError) as e:
        raise fail(e) from None
    if as_json:
        sites = [vars(s) for s in res.sites]
        typer.echo(json.dumps({**record, "out": out, "sites": sites}, indent=2))
        return
    typer.echo(res.table())
    done = len(res.sites) - len(res.not_canonical)
    typer.echo(f"\n{done}/{len(res.sites)} sites canonical; relative output change "
               f"{res.error:.1e} (float64). saved {out}")  # fmt: skip


_ARG_CHECKPOINTS = typer.Argument(
    ..., metavar="CHECKPOINT...", help="Checkpoints (.safetensors) of one or more models."
)


@app.command("fingerprint")
def fingerprint_cmd(
    checkpoints_: list[str] = _ARG_CHECKPOINTS,
    decimals: int | None = typer.Option(
        None, min=0, max=15, help="Digits kept (default 8 for float64 models, else 3)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """A hash of each model's canonical weights: equal for models that differ by a symmetry of
    their architecture (permuted, rescaled units, ...); duplicates are grouped."""
    import warnings

    from intertwiner.errors import IntertwinerError
    from intertwiner.symmetry import canonicalize, fingerprint

    rows = []
    try:
        for path in checkpoints_:
            model, _, x, spec = _load_traced(path)
            res = canonicalize(model, spec, x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reported in the table instead
                fp = fingerprint(model, canonical=res, decimals=decimals)
            rows.append({"checkpoint": path, "fingerprint": fp, "not_canonical": res.not_canonical})
    except (IntertwinerError, ValueError, KeyError, OSError) as e:
        raise fail(e) from None
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["fingerprint"], []).append(r["checkpoint"])
    if as_json:
        dup = [g for g in groups.values() if len(g) > 1]
        typer.echo(json.dumps({"models": rows, "duplicates": dup}, indent=2))
        return
    for r in rows:
        note = (
            f"  (not canonical: {', '.join(r['not_canonical'][:3])})" if r["not_canonical"] else ""
        )
        typer.echo(f"{r['fingerprint']}  {r['checkpoint']}{note}")
    for fp, paths in groups.items():
        if len(paths) > 1:
            typer.echo(f"same orbit ({fp[:12]}): {', '.join(paths)}")


@app.command("permutation-spec")
def permutation_spec_cmd(
    checkpoint: str = typer.Argument(..., help="A .safetensors checkpoint written by train/zoo."),
    out: str | None = typer.Option(None, "--out", help="Write the JSON here instead of stdout."),
) -> None:
    """The traced symmetry as Git Re-Basin's permutation spec (perm_to_axes, axes_to_perm; sites
    that act on part of an axis are listed under "skipped"). ``symmetries --json`` prints the full
    description of every site."""
    from intertwiner.errors import IntertwinerError

    try:
        model, _, _, spec = _load_traced(checkpoint)
        ps = spec.to_permutation_spec(model)
        if out is not None:
            _write_json(out, ps)
    except (IntertwinerError, ValueError, KeyError, OSError) as e:
        raise fail(e) from None
    if out is None:
        typer.echo(json.dumps(ps, indent=2))
    else:
        typer.echo(f"saved {out}: {len(ps['perm_to_axes'])} permutations, "
                   f"{len(ps['skipped'])} sites skipped")  # fmt: skip
