"""Barrier curves: loss (left) and accuracy (right) against alpha for several interpolations."""

from __future__ import annotations

import os
from collections.abc import Sequence


def plot_curves(curves: Sequence, path: str | os.PathLike | None = None, *, title: str = ""):
    """One line per ``Interpolation`` (labelled by ``.label``); a PNG at ``path`` when given.
    Returns the matplotlib Figure (a bare Figure: pyplot's global state is left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2))
    ax_l, ax_a = fig.subplots(1, 2)
    for c in curves:
        label = c.label or ("BN reset" if c.reset_bn else "")
        lbl = f"{label} (barrier {c.barrier:.3f})" if label else f"barrier {c.barrier:.3f}"
        ax_l.plot(c.alphas, c.losses, marker="o", ms=3, label=lbl)
        ax_a.plot(c.alphas, c.accuracies, marker="o", ms=3, label=label or None)
    ax_l.set_xlabel("alpha (0 = A, 1 = B)")
    ax_l.set_ylabel("loss")
    ax_a.set_xlabel("alpha (0 = A, 1 = B)")
    ax_a.set_ylabel("accuracy")
    ax_l.legend(fontsize=7)
    if title:
        import textwrap

        # tight_layout leaves no room for a suptitle: keep the top for it (wrapped when long)
        wrapped = "\n".join(textwrap.wrap(title, 100))
        fig.suptitle(wrapped, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.07 * (wrapped.count("\n") + 1)))
    else:
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
