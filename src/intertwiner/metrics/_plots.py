"""Figures of metric matrices (matplotlib, imported lazily; a bare Figure renders with the Agg
canvas and leaves pyplot's global state alone, so nothing calls ``matplotlib.use``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from intertwiner import _atomic


def annotated_heatmap(
    fig: Any,
    ax: Any,
    m: np.ndarray,
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    *,
    title: str = "",
    higher_is_similar: bool = True,
    value_range: tuple[float, float] | None = None,
) -> None:
    """``m`` (rows x columns) as a heatmap with its values written in the cells and a colour bar.

    ``value_range``: the metric's (low, high); when finite the colours span it, so 0.98 and 0.99
    look alike as they should, not like the two ends of the scale."""
    lo, hi = value_range if value_range is not None else (None, None)
    bounded = lo is not None and hi is not None and np.isfinite([lo, hi]).all() and hi > lo
    vmin, vmax = (lo, hi) if bounded else (None, None)
    im = ax.imshow(m, cmap="viridis" if higher_is_similar else "magma", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(xlabels)), list(xlabels), rotation=45, ha="right")
    ax.set_yticks(range(len(ylabels)), list(ylabels))
    finite = m[np.isfinite(m)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    mid = (vmin + vmax) / 2 if bounded else mid
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9 if m.shape[0] <= 8 else 7,
                    color="black" if m[i, j] > mid else "white",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)


def save_png(fig: Any, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (a temporary file in the same folder, then a rename)."""
    _atomic.save_figure(fig, path, dpi=120, format="png")
