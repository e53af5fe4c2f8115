"""Matplotlib figures (Agg) for the report; each takes store rows and returns a Figure or None.

Aggregation helpers (``stitch_table``, ``metric_means``, ...) are shared with the comparison table.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from intertwiner.groups import ORTHOGONAL, find_family
from intertwiner.rows import read
from intertwiner.store import Row

METRIC_LABELS = {
    "cka": "linear CKA",
    "grelu_cka": "G_ReLU-CKA",
    "orthogonal_procrustes": "orthogonal Procrustes sim.",
    "grelu_procrustes": "G_ReLU Procrustes sim.",
}


def to_png_base64(fig, dpi: int = 90) -> str:
    """PNG bytes of ``fig``, base64 encoded."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def subplots(*grid: int, **kwargs) -> tuple[Figure, object]:
    """``(figure, axes)`` like ``pyplot.subplots``, on a bare Figure (Agg canvas): no global
    backend switch at import and no pyplot registry to close."""
    figure_kw = {k: kwargs.pop(k) for k in ("figsize", "layout", "dpi") if k in kwargs}
    fig = Figure(**figure_kw)
    return fig, fig.subplots(*grid, **kwargs)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


# -- aggregation ---------------------------------------------------------------------------------
def stitch_table(rows: list[Row]) -> dict:
    """arch -> layer label -> site index -> list of penalties (accuracy points)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in read(rows, "stitching"):
        out[r.job.arch][r.job.layer_label][r.job.site_index].append(_points(r.result.penalty))
    return out


def site_labels(rows: list[Row]) -> dict:
    """arch -> site index -> module name (``*`` appended inside a residual branch); the index
    itself for rows stored before the name was recorded."""
    out: dict = defaultdict(dict)
    for r in read(rows, "stitching"):
        i, name = r.job.site_index, r.result.site
        label = str(name) if name else f"site {i}"
        if r.result.in_residual_branch:
            label += "*"
        out[r.job.arch][i] = label
    return out


def _points(x: float | None) -> float | None:
    """Penalties in accuracy points; the library reports accuracies as fractions in [0, 1]."""
    return None if x is None else 100.0 * x


def metric_means(rows: list[Row]) -> dict:
    """arch -> metric -> (sites, mean matrix, std matrix, n pairs) averaged over pairs."""
    by: dict = defaultdict(list)
    for r in read(rows, "metrics"):
        by[r.job.arch].append(r)
    out: dict = {}
    for arch, rs in by.items():
        sites = rs[0].result.sites
        out[arch] = {}
        for m in rs[0].job.metrics:
            mats = [
                np.array([[np.nan if v is None else v for v in row] for row in mat], float)
                for mat in (r.result.matrix(m) for r in rs)
                if mat is not None
            ]
            if not mats:
                continue
            stack = np.stack(mats)
            with np.errstate(all="ignore"):
                mean = np.nanmean(stack, axis=0) if np.isfinite(stack).any() else stack[0]
                std = np.nanstd(stack, axis=0)
            out[arch][m] = (sites, mean, std, len(mats))
    return out


# -- figures -------------------------------------------------------------------------------------
def _grouped_bars(ax, values: dict, xs: list, xlabels: list[str]) -> None:
    """One bar group per x, one bar per key of ``values`` ({key: {x: [samples]}}), error = std."""
    keys = sorted(values)
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        stats = [mean_std(values[key].get(x, [])) for x in xs]
        ax.bar(
            np.arange(len(xs)) + (j - (len(keys) - 1) / 2) * width,
            [m for m, _, _ in stats],
            width,
            yerr=[sd for _, sd, _ in stats],
            capsize=2,
            label=key,
        )
    ax.set_xticks(range(len(xs)), xlabels)
    ax.axhline(0, color="k", lw=0.5)


def stitching_figure(rows: list[Row]):
    """Bars of the stitching penalty per site, one group per layer kind, error bars = std."""
    table = stitch_table(rows)
    if not table:
        return None
    labels = site_labels(rows)
    archs = sorted(table)
    fig, axes = subplots(1, len(archs), figsize=(5.2 * len(archs), 4.0), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sites = sorted({s for k in table[arch] for s in table[arch][k]})
        names = [labels[arch].get(s, f"site {s}") for s in sites]
        _grouped_bars(ax, table[arch], sites, names)
        ax.tick_params(axis="x", labelrotation=30, labelsize=9)
        ax.set_title(arch, fontsize=11)
        ax.set_ylabel("penalty (accuracy points)", fontsize=10)
        if any(n.endswith("*") for n in names):
            ax.set_xlabel("* inside a residual branch (its input stream stitched too)", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, title="stitching layer", fontsize=9, title_fontsize=9,
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(names), 5))  # fmt: skip
    fig.tight_layout()
    return fig


def heatmap_figure(arch: str, means: dict):
    """One heatmap per metric (mean over pairs), rows = model a sites, columns = model b sites."""
    names = [m for m in METRIC_LABELS if m in means]
    if not names:
        return None
    sites = means[names[0]][0]
    side = max(3.6, 0.55 * len(sites) + 2.2)
    # two panels a row: the page shows the figure at its natural size, numbers stay readable
    ncol = min(2, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = subplots(
        nrow, ncol, figsize=(side * ncol + 1, side * nrow), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for k, (ax, m) in enumerate(zip(axes.flat, names)):
        sites, mean, _, n = means[m]
        im = ax.imshow(mean, vmin=0, vmax=1, cmap="viridis")
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                if np.isfinite(mean[i, j]) and mean.shape[0] <= 10:
                    ax.text(
                        j,
                        i,
                        f"{mean[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=10 if mean.shape[0] <= 6 else 8,
                        color="w" if mean[i, j] < 0.6 else "k",
                    )
        ax.set_title(f"{METRIC_LABELS[m]}\n({n} pair{'s' * (n != 1)})", fontsize=11)
        ax.set_xticks(range(len(sites)), sites, fontsize=8, rotation=45, ha="right")
        # names on the first panel only: they would run into the panel on the left
        ax.set_yticks(range(len(sites)), sites if k % ncol == 0 else [], fontsize=8)
        ax.set_xlabel("site of model b", fontsize=9)
        if k % ncol == 0:
            ax.set_ylabel("site of model a", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    fig.suptitle(arch, fontsize=12)
    return fig


def diagonal_figure(all_means: dict):
    """Same-layer similarity against depth, every metric, one panel per architecture."""
    archs = sorted(all_means)
    if not archs:
        return None
    fig, axes = subplots(1, len(archs), figsize=(5.2 * len(archs), 4.0), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sites = next(iter(all_means[arch].values()))[0] if all_means[arch] else []
        for m, (_sites, mean, std, _) in all_means[arch].items():
            d, s = np.diag(mean), np.diag(std)
            ax.errorbar(range(len(d)), d, yerr=s, marker="o", capsize=2, label=METRIC_LABELS[m])
        # one tick per site, named: no fractional ticks between two sites
        ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_title(arch, fontsize=11)
        ax.set_xlabel("site (by depth)", fontsize=10)
        ax.set_ylabel("same-layer similarity", fontsize=10)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(names), 4))  # fmt: skip
    fig.tight_layout()
    return fig


def groups_figure(rows: list[Row]):
    """Relative verification error of each activation's group against the next larger family."""
    if not rows:
        return None
    results = [r.result for r in read(rows, "group_table")]
    names = [g.activation for g in results]
    own = [max(g.verify_error_float64 or 0.0, 1e-17) for g in results]
    larger = [g.larger_family_error for g in results]
    fig, ax = subplots(figsize=(7, 3))
    x = np.arange(len(names))
    ax.bar(x - 0.2, own, 0.4, label="tabulated group (must be ~0)")
    ax.bar(x + 0.2, [v if v else np.nan for v in larger], 0.4, label="next larger family")
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.set_ylabel("relative error")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def sanity_figure(rows: list[Row]):
    """Rotation penalty per layer: G_ReLU vs orthogonal, one panel per activation."""
    if not rows:
        return None
    by: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in read(rows, "sanity"):
        c = r.job
        by[c.activation][c.group][c.layer].append(_points(r.result.penalty))
    acts = sorted(by)
    fig, axes = subplots(1, len(acts), figsize=(3.6 * len(acts), 3.2), squeeze=False)
    for ax, act in zip(axes[0], acts):
        layers = sorted({lay for g in by[act] for lay in by[act][g]})
        _grouped_bars(ax, by[act], layers, [f"conv {lay}" for lay in layers])
        ax.set_title(act, fontsize=11)
        ax.set_ylabel("rotation penalty (points)", fontsize=10)
    axes[0][-1].legend(title="fixed map", fontsize=9, title_fontsize=9)
    fig.tight_layout()
    return fig


def dissection_table(rows: list[Row]) -> dict:
    """layer -> {"powers", "power_counts" (list per model), "identity", "group", "orthogonal"}."""
    out: dict = {}
    for r in read(rows, "dissection"):
        m = r.result
        d = out.setdefault(
            m.layer,
            {
                "powers": m.powers,
                "power_counts": [],
                "identity": [],
                "group": [],
                "orthogonal": [],
                "n_units": m.n_units,
                "group_name": m.group,
            },
        )
        d["power_counts"].append(m.power_counts)
        d["identity"].append(m.counts.get("identity"))
        d["group"].append(m.counts.get(m.group))
        # Haar rotations are stored as bases "orthogonal0", "orthogonal1", ...
        d["orthogonal"] += [
            v for k, v in m.counts.items() if find_family(k.rstrip("0123456789")) is ORTHOGONAL
        ]
    return out


def dissection_figure(rows: list[Row]):
    """Interpretable units against the rotation power (0 = neuron basis, 1 = a Haar rotation)."""
    table = dissection_table(rows)
    if not table:
        return None
    fig, ax = subplots(figsize=(5.5, 3.4))
    for j, (layer, d) in enumerate(sorted(table.items())):
        counts = np.array(d["power_counts"], dtype=float)
        color = f"C{j}"
        ax.errorbar(
            d["powers"],
            counts.mean(0),
            yerr=counts.std(0),
            marker="o",
            capsize=2,
            color=color,
            label=f"{layer} ({d['n_units']} units): rotation power",
        )
        ax.plot(
            [1.0],
            [np.mean(d["group"])],
            marker="*",
            ms=11,
            color=color,
            ls="none",
            label=f"{layer}: random {d['group_name']} element",
        )
    ax.set_xlabel("rotation power t (basis R^t)")
    ax.set_ylabel("interpretable units")
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)  # unit counts
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
