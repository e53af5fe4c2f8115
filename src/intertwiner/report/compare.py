"""Our numbers beside the paper's: rows of (experiment, quantity, ours, paper, difference)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from intertwiner.report import claims as C
from intertwiner.report import paper_numbers as P
from intertwiner.report.figures import (
    _points,
    mean_std,
    metric_means,
    site_labels,
    stitch_table,
)
from intertwiner.rows import read
from intertwiner.stats import FAILS, HOLDS, t_interval
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
    values: Sequence[float | None] | None = None,
) -> dict:
    """A number beside the paper's: ``ours`` mean ± std over units; ``values`` (the units) add
    the 95% t-interval of the mean."""
    diff = None if ours is None or paper is None or not math.isfinite(ours) else ours - paper
    ours_s = _fmt(ours, digits) + (f" ± {_fmt(ours_sd, digits)}" if ours_sd else "")
    interval = ""
    if values is not None and any(v is not None and math.isfinite(v) for v in values):
        interval = C.ci_text(t_interval(values), digits)
    return {
        "experiment": exp,
        "quantity": qty,
        "ours": ours_s,
        "95% CI": interval,
        "paper": _fmt(paper, digits),
        "difference": "n/a" if diff is None else f"{diff:+.{digits}f}",
        "verdict": "",
    }


def _claim(exp: str, claim: str, paper: str, ours: bool | None) -> dict:
    """A claim decided without sampling error (Table 1: a deterministic check)."""
    v = {None: "n/a", True: HOLDS, False: FAILS}[ours]
    return {
        "experiment": exp,
        "quantity": claim,
        "ours": v,
        "95% CI": "(exact)",
        "paper": paper,
        "difference": "agrees" if ours else ("n/a" if ours is None else "DIFFERS"),
        "verdict": v,
    }


def _sanity_rows(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    """Section 3.3: penalties per conv beside the paper's, then the claims with intervals."""
    out: list[dict] = []
    sanity = rows_by_kind.get("sanity", [])
    san: dict = defaultdict(lambda: defaultdict(list))
    for r in read(sanity, "sanity"):
        if r.job.activation == "relu":
            san[r.job.group][r.job.layer].append(_points(r.result.penalty))
    layers = sorted({lay for g in san.values() for lay in g})
    for i, (gp, op) in P.SANITY_PENALTY.items() if san else ():
        lay = layers[i] if i < len(layers) else None
        for gname, paper in (("G_ReLU", gp), ("orthogonal", op)):
            vals = san.get(gname, {}).get(lay, []) if lay is not None else []
            m, sd, _ = mean_std(vals) if vals else (None, None, 0)
            out.append(_row("3.3 sanity test (ReLU)", f"{gname} rotation penalty, conv {i}", m,
                            paper, 1, sd, vals))  # fmt: skip
    out += C.sanity_claims(sanity)
    out += C.absorb_claims(rows_by_kind.get("absorb", []))
    return out


def _stitching_rows(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    """Section 4, mCNN: penalty per site and layer kind, then G_ReLU vs full with an interval."""
    out: list[dict] = []
    rows = rows_by_kind.get("stitching", [])
    st = stitch_table(rows).get(MCNN, {})
    names = site_labels(rows).get(MCNN, {})
    sites = sorted({s for k in st.values() for s in k})
    for kind, vals in P.STITCH_MCNN.items():
        if kind not in st:
            continue
        for i, paper in enumerate(vals):
            if i < len(sites):
                v = st[kind].get(sites[i], [])
                m, sd, _ = mean_std(v)
                label = names.get(sites[i], f"site {i}")
                out.append(_row("4 stitching (mCNN)", f"{kind} penalty, {label}", m, paper, 1,
                                sd, v))  # fmt: skip
    return out + C.stitching_claims(rows, MCNN)


def _metric_rows(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    """Section 5, mCNN: same-layer similarities beside the paper's, then the two claims."""
    out: list[dict] = []
    rows = rows_by_kind.get("metrics", [])
    mm = metric_means(rows).get(MCNN, {})
    per_pair = {name: C.per_pair_diagonal(rows, MCNN, name) for name in mm}
    tables = [(name, vals, 3) for name, vals in P.PROCRUSTES_MCNN.items()]
    tables += [(name, [mat[i][i] for i in range(len(mat))], 2) for name, mat in P.CKA_MCNN.items()]
    for name, vals, digits in tables:
        if name not in mm:
            continue
        sites, mean, std, _ = mm[name]
        for i, paper in enumerate(vals):
            if i < mean.shape[0]:
                units = [float(d[i]) for d in per_pair[name].values()]
                out.append(_row("5 metrics (mCNN)", f"{name} same layer, {_site(sites, i)}",
                                float(mean[i, i]), paper, digits, float(std[i, i]),
                                units))  # fmt: skip
    sites = next(iter(mm.values()))[0] if mm else []
    return out + C.metric_claims(rows, MCNN, sites if isinstance(sites, list) else [])


def _table1_rows(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    groups = rows_by_kind.get("group_table", [])
    if not groups:
        return []
    agree = [
        g.family == P.TABLE1[g.activation][0]
        for g in (r.result for r in read(groups, "group_table"))
        if g.activation in P.TABLE1
    ]
    return [_claim("Table 1 groups",
                   f"tabulated family matches the paper ({sum(agree)}/{len(agree)} rows)", "—",
                   all(agree) if agree else None)]  # fmt: skip


def comparison(rows_by_kind: dict[str, list[Row]]) -> list[dict]:
    """The comparison table; quantities we did not measure read "n/a", never a made-up value.

    Columns: experiment, quantity, ours (mean ± std over units; a claim's statistic), 95% CI (the
    t-interval of the mean over pairs, repeats or seeds), paper, difference, verdict (claims only:
    holds / does not hold / inconclusive, from the interval).
    """
    return (
        _sanity_rows(rows_by_kind)
        + _stitching_rows(rows_by_kind)
        + _metric_rows(rows_by_kind)
        + C.dissection_claims(rows_by_kind.get("dissection", []))
        + _table1_rows(rows_by_kind)
    )
