"""The dissection figure: interpretable units against the power of a rotation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from intertwiner import _atomic
from intertwiner.groups import ORTHOGONAL, find_family

__all__ = ["plot_rotation_curve"]


def plot_rotation_curve(
    experiment: Mapping[str, Any], path: str | Path, *, title: str | None = None
) -> Path:
    """Interpretable units vs rotation power (PNG at ``path``), with the identity, group and
    orthogonal counts as reference lines. ``experiment`` is ``dissection_experiment``'s output.
    """
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    rows = experiment["rows"]
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["n_interpretable"])
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    ax.plot(experiment["powers"], experiment["power_counts"], "o-", label="rotation power p")
    # Reference lines: the neuron basis, the Haar rotations (family orthogonal), the site's group.
    for kind, counts in by_kind.items():
        if kind == "power":  # the rotation-power curve, plotted above
            continue
        if find_family(kind) is ORTHOGONAL:
            colour, ls = "tab:red", ":"
        else:
            colour, ls = ("k", "--") if kind == "identity" else ("tab:green", "-.")
        ax.axhline(
            float(np.mean(counts)), color=colour, ls=ls, label=f"{kind} ({np.mean(counts):g})"
        )
    ax.set_xlabel("rotation power p (0 = neuron basis, 1 = full random rotation)")
    ax.set_ylabel("interpretable units")
    n_units = rows[0]["n_units"]
    ax.set_ylim(0, n_units * 1.05)
    ax.set_title(title or f"dissection of {rows[0]['layer']} ({n_units} units)")
    ax.legend(fontsize=8)
    return _atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")
