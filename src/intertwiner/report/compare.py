"""Our numbers beside the paper's: rows of (experiment, quantity, ours, paper, difference)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from intertwiner.report import paper_numbers as P
from intertwiner.report.figures import (
    _points,
    dissection_table,
    mean_std,
    metric_means,
    site_labels,
    stitch_table,
)
from intertwiner.store import Row

MCNN = "myrtle_cnn"


def _site(sites, i: int) -> str:
    """The module name of site ``i`` when the rows recorded names, else "site i"."""
    return str(sites[i]) if isinstance(sites, list) and i < len(sites) else f"site {i}"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _row(
    exp: str,
    qty: str,
    ours: float | None,
    paper: float | None,
    digits: int = 2,
    ours_sd: float | None = None,
) -> dict:
    diff = None if ours is None or paper is None or not math.isfinite(ours) else ours - paper
    ours_s = _fmt(ours, digits) + (f" ± {_fmt(ours_sd, digits)}" if ours_sd else "")
    return {
        "experiment": exp,
        "quantity": qty,
        "ours": ours_s,
        "paper": _fmt(paper, digits),
        "difference": "n/a" if diff is None else f"{diff:+.{digits}f}",
    }


def _claim(exp: str, claim: str, paper: str, ours: bool | None) -> dict:
    return {
        "experiment": exp,
        "quantity": claim,
        "ours": {None: "n/a", True: "holds", False: "does not hold"}[ours],
        "paper": paper,
        "difference": "agrees" if ours else ("n/a" if ours is None else "DIFFERS"),
    }


def comparison(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    """The comparison table; quantities we did not measure read "n/a", never a made-up value."""
    out: list[dict] = []
    # Section 3.3 sanity test (ReLU net).
    sanity = rows_by_kind.get("sanity", [])
    san: dict = defaultdict(lambda: defaultdict(list))
    for r in sanity:
        if r.config.get("activation") == "relu":
            san[r.config["group"]][r.config["layer"]].append(_points(r.metrics["penalty"]))
    layers = sorted({lay for g in san.values() for lay in g})
    for i, (gp, op) in P.SANITY_PENALTY.items() if san else ():
        lay = layers[i] if i < len(layers) else None
        for gname, paper in (("G_ReLU", gp), ("orthogonal", op)):
            m, sd, _ = (
                mean_std(san.get(gname, {}).get(lay, [])) if lay is not None else (None, None, 0)
            )
            out.append(
                _row(
                    "3.3 sanity test (ReLU)", f"{gname} rotation penalty, conv {i}", m, paper, 1, sd
                )
            )
    if san:
        g = [mean_std(v)[0] for v in san.get("G_ReLU", {}).values()]
        o = [mean_std(v)[0] for v in san.get("orthogonal", {}).values()]
        holds = bool(g and o and np.nanmean(g) < np.nanmean(o))
        out.append(
            _claim(
                "3.3 sanity test (ReLU)",
                "G_ReLU penalty < orthogonal (mean of layers)",
                "holds",
                holds if g and o else None,
            )
        )
    # Section 4 stitching, mCNN.
    st = stitch_table(rows_by_kind.get("stitching", [])).get(MCNN, {})
    names = site_labels(rows_by_kind.get("stitching", [])).get(MCNN, {})
    sites = sorted({s for k in st.values() for s in k})
    for kind, vals in P.STITCH_MCNN.items():
        if kind not in st:
            continue
        for i, paper in enumerate(vals):
            if i < len(sites):
                m, sd, _ = mean_std(st[kind].get(sites[i], []))
                label = names.get(sites[i], f"site {i}")
                out.append(_row("4 stitching (mCNN)", f"{kind} penalty, {label}", m, paper, 1, sd))
    if "full" in st and "perm_scale" in st:
        f = [mean_std(v)[0] for v in st["full"].values()]
        g = [mean_std(v)[0] for v in st["perm_scale"].values()]
        out.append(
            _claim(
                "4 stitching (mCNN)",
                "full (GL) penalty < G_ReLU penalty (mean)",
                "holds",
                bool(np.nanmean(f) < np.nanmean(g)),
            )
        )
    # Section 5 metrics, mCNN.
    mm = metric_means(rows_by_kind.get("metrics", [])).get(MCNN, {})
    for name, vals in {**P.PROCRUSTES_MCNN}.items():
        if name in mm:
            sites, mean, std, _ = mm[name]
            for i, paper in enumerate(vals):
                if i < mean.shape[0]:
                    out.append(
                        _row(
                            "5 metrics (mCNN)",
                            f"{name} same layer, {_site(sites, i)}",
                            float(mean[i, i]),
                            paper,
                            3,
                            float(std[i, i]),
                        )
                    )
    for name, mat in P.CKA_MCNN.items():
        if name in mm:
            sites, mean, std, _ = mm[name]
            for i in range(min(len(mat), mean.shape[0])):
                out.append(
                    _row(
                        "5 metrics (mCNN)",
                        f"{name} same layer, {_site(sites, i)}",
                        float(mean[i, i]),
                        mat[i][i],
                        2,
                        float(std[i, i]),
                    )
                )
    if "grelu_procrustes" in mm and "orthogonal_procrustes" in mm:
        g = np.diag(mm["grelu_procrustes"][1])
        o = np.diag(mm["orthogonal_procrustes"][1])
        out.append(
            _claim(
                "5 metrics (mCNN)",
                "orthogonal Procrustes ≥ G_ReLU Procrustes at every layer",
                "holds",
                bool(np.all(o >= g - 1e-9)),
            )
        )
    if "grelu_cka" in mm and "cka" in mm:
        g, c = np.diag(mm["grelu_cka"][1]), np.diag(mm["cka"][1])
        out.append(
            _claim(
                "5 metrics (mCNN)",
                "G_ReLU-CKA < linear CKA on the diagonal",
                "holds",
                bool(np.all(g < c)),
            )
        )
    # Section 6 dissection.
    dis = dissection_table(rows_by_kind.get("dissection", []))
    for layer, d in sorted(dis.items()):
        ident, grp = mean_std(d["identity"])[0], mean_std(d["group"])[0]
        rot = np.array(d["power_counts"], dtype=float).mean(0)
        out.append(
            _claim(
                "6 dissection",
                f"{layer}: fewer interpretable units after a full "
                f"rotation (ours {rot[0]:.1f} → {rot[-1]:.1f} of {d['n_units']})",
                "holds (counts unknown)",
                bool(rot[-1] < rot[0]),
            )
        )
        out.append(
            _claim(
                "6 dissection",
                f"{layer}: {d['group_name']} leaves the count unchanged "
                f"(ours {ident:.1f} vs {grp:.1f})",
                "holds (counts unknown)",
                bool(ident == grp),
            )
        )
    # Table 1.
    groups = rows_by_kind.get("group_table", [])
    if groups:
        agree = [
            r.metrics.get("family") == P.TABLE1[r.metrics["activation"]][0]
            for r in groups
            if r.metrics.get("activation") in P.TABLE1
        ]
        out.append(
            _claim(
                "Table 1 groups",
                f"tabulated family matches the paper ({sum(agree)}/{len(agree)} rows)",
                "—",
                all(agree) if agree else None,
            )
        )
    return out
