"""The group table printed by ``intertwiner groups``: tabulated group, verification, rediscovery."""

from __future__ import annotations

import torch

from intertwiner.errors import IntertwinerError
from intertwiner.groups._activations import TABLE_ROWS, activation_module, for_activation
from intertwiner.groups._discovery import discover
from intertwiner.groups._families import LARGER
from intertwiner.groups._group import IntertwinerGroup
from intertwiner.groups._verify import verify


def group_row(name: str, trials: int = 16) -> dict:
    """One row: the tabulated group of ``name``, its verification errors and what discover finds.

    Verification errors are relative (max |sigma(Ax) - phi(A) sigma(x)| / max |sigma(Ax)|) so that
    rows with large outputs (x^3) read on the same scale as the others.
    """
    group = for_activation(name)
    module = activation_module(name)
    row = {
        "activation": name,
        "group": group.name,
        "family": group.family.name,
        "description": group.family.description,
        "phi": group.phi_label,
        "verify_error_float64": verify(group, module, trials=trials, relative=True),
        "verify_error_float32": verify(
            group, module, trials=trials, dtype=torch.float32, relative=True
        ),
    }
    # The same identity under each next larger family must fail, or the table proves nothing.
    larger = [
        verify(_with_phi(fam, group), module, trials=trials, relative=True)
        for fam in LARGER[group.family.name]
    ]
    row["larger_family_error"] = min(larger) if larger else None
    try:
        found = discover(module, name=name)
        row["discovered_family"] = found.family.name
        row["discovered_phi"] = found.phi_label
        row["discover_agrees"] = found.same_as(group)
    except IntertwinerError as e:  # reported in the table, never hidden
        row["discovered_family"] = f"error: {e}"
        row["discovered_phi"] = ""
        row["discover_agrees"] = False
    return row


def _with_phi(fam: str, group: IntertwinerGroup) -> IntertwinerGroup:
    """The larger family with the group's own phi where that phi is defined for it."""
    try:
        return IntertwinerGroup(fam, group.phi_kind)
    except IntertwinerError:
        return IntertwinerGroup(fam, "identity")


def group_table(names: list[str] | None = None, trials: int = 16) -> list[dict]:
    """Rows for ``names`` (default: the paper's table, then every torch.nn elementwise activation)."""
    return [group_row(n, trials=trials) for n in (names or TABLE_ROWS)]


def format_table(rows: list[dict]) -> str:
    """Plain-text table of ``group_table`` rows.

    ``err f64``/``err f32``: relative verification error of the tabulated group; ``larger``: the
    same error for elements of the next larger family (it must be large).
    """
    headers = [
        "activation",
        "group",
        "G (family)",
        "phi(A)",
        "err f64",
        "err f32",
        "larger",
        "discover",
    ]
    body = [
        [
            r["activation"],
            r["group"],
            r["description"],
            r["phi"],
            f"{r['verify_error_float64']:.1e}",
            f"{r['verify_error_float32']:.1e}",
            "-" if r["larger_family_error"] is None else f"{r['larger_family_error']:.1e}",
            "agrees" if r["discover_agrees"] else f"DIFFERS ({r['discovered_family']})",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)
