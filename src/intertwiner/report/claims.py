"""The paper's claims as statistics with 95% t-intervals and three-valued verdicts.

Each function takes store rows of one kind and returns claim rows: ``experiment``, ``quantity``
(the claim, with the effect size and, for the sanity test, the smallest effect the run could
detect), ``ours`` (the statistic, ``m [low, high]``), ``paper``, ``difference`` ("agrees" when the
claim holds here, "DIFFERS" when it does not, "cannot tell" when inconclusive) and ``verdict``.
Units of the intervals: model pairs (metrics, stitching), repeats (sanity, absorb) or seeds
(dissection); the interval kind is stated in each claim (t over paired differences, Welch for two
independent groups).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from intertwiner.groups import (
    GENERAL_LINEAR,
    ORTHOGONAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    find_family,
)
from intertwiner.report.figures import _points, dissection_table
from intertwiner.rows import read
from intertwiner.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Interval,
    detectable_effect,
    t_interval,
    verdict,
    welch_interval,
)
from intertwiner.store import Row

DIFF = {HOLDS: "agrees", FAILS: "DIFFERS", INCONCLUSIVE: "cannot tell"}
ABSORB_TOL = 0.1  # points: "absorbed" = refit accuracy within 0.1 point of the base


def _d(iv: Interval) -> str:
    e = iv.effect
    if math.isnan(e):
        return "d n/a"
    return "d = ∞" if math.isinf(e) else f"d = {e:.1f}"


def claim_row(exp: str, claim: str, iv: Interval | None, v: str, digits: int = 2,
              paper: str = "holds") -> dict:  # fmt: skip
    """One claim row; ``iv`` None (nothing measured) reads "n/a"."""
    return {
        "experiment": exp,
        "quantity": claim,
        "ours": "n/a" if iv is None else f"{iv.mean:.{digits}f}",
        "95% CI": "" if iv is None else ci_text(iv, digits),
        "paper": paper,
        "difference": "n/a" if iv is None else DIFF[v],
        "verdict": "n/a" if iv is None else v,
    }


def ci_text(iv: Interval, digits: int = 2) -> str:
    """``"[low, high]"``; ``"(n = 1: none)"`` when one unit gives no interval."""
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return f"(n = {iv.n}: none)"
    return f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def all_of(verdicts: Sequence[str]) -> str:
    """A claim "at every layer": holds when each holds, fails when any fails."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def _weakest(ivs: dict[str, Interval], low: float) -> tuple[str, Interval]:
    """The layer whose interval lies lowest relative to ``low`` (the hardest for the claim)."""
    return min(ivs.items(), key=lambda kv: kv[1].low - low)


def sanity_claims(rows: list[Row], activation: str = "relu") -> list[dict]:
    """Orthogonal penalty > G_ReLU penalty, per layer and averaged over layers (Welch); the same
    against the permutation-only control when its rows exist."""
    # Row labels become families once, here; the identity control rows name none.
    by: dict = defaultdict(lambda: defaultdict(dict))
    label = {}
    for r in read(rows, "sanity"):
        c = r.job
        fam = find_family(c.group) if c.activation == activation else None
        if fam is not None:
            by[fam][c.layer][c.repeat] = _points(r.result.penalty)
            label[fam] = c.group
    out = []
    # Groups an absorbing refit can undo (G_ReLU, its permutation part) against orthogonal maps.
    for ref in (POSITIVE_MONOMIAL, PERMUTATION):
        if ref in by and ORTHOGONAL in by:
            out += _penalty_claims(by[ref], by[ORTHOGONAL], label[ref], activation)
    return out


def _penalty_claims(g: dict, o: dict, ref: str, activation: str) -> list[dict]:
    """Claims ``orthogonal - ref penalty > 0`` per layer and for the mean over layers."""
    layers = sorted(set(g) & set(o))
    exp = f"3.3 sanity test ({activation}, retrained)"
    out = []
    units = {}
    for lay in layers:
        units[f"conv {lay}"] = (list(o[lay].values()), list(g[lay].values()))
    common_o = set.intersection(*(set(o[lay]) for lay in layers)) if layers else set()
    common_g = set.intersection(*(set(g[lay]) for lay in layers)) if layers else set()
    if len(layers) > 1 and common_o and common_g:
        units["mean of convs"] = ([np.mean([o[lay][k] for lay in layers]) for k in common_o],
                                  [np.mean([g[lay][k] for lay in layers]) for k in common_g])  # fmt: skip
    for name, (ov, gv) in units.items():
        iv = welch_interval(ov, gv)
        mde = detectable_effect(iv.sd, iv.n)
        out.append(claim_row(exp, f"orthogonal − {ref} penalty > 0, {name} (points; Welch; "
                             f"{_d(iv)}; detectable ≥ {mde:.1f} at 80% power, n = {iv.n})", iv,
                             verdict(iv, 0.0), 1))  # fmt: skip
    return out


def absorb_claims(rows: list[Row], activation: str = "relu") -> list[dict]:
    """Closed-form refit: G_ReLU drop within ±0.1 point, orthogonal drop above 0.1 point (t)."""
    by: dict = defaultdict(lambda: defaultdict(list))
    for r in read(rows, "absorb"):
        if r.job.activation == activation:
            by[r.job.group][r.job.layer].append(_points(r.result.drop))
    exp = f"3.3 sanity test ({activation}, closed-form refit)"
    out = []
    for group, low, high, text in (
        ("identity", -ABSORB_TOL, ABSORB_TOL, "identity (control): refit within ±0.1 point"),
        ("G_ReLU", -ABSORB_TOL, ABSORB_TOL, "G_ReLU map absorbed: drop within ±0.1 point"),
        ("orthogonal", ABSORB_TOL, math.inf, "orthogonal map not absorbed: drop > 0.1 point"),
    ):
        layers = by.get(group, {})
        if not layers:
            continue
        ivs = {f"conv {lay}": t_interval(v) for lay, v in sorted(layers.items())}
        v = all_of([verdict(iv, low, high) for iv in ivs.values()])
        name, iv = _weakest(ivs, low) if high == math.inf else max(
            ivs.items(), key=lambda kv: max(abs(kv[1].low), abs(kv[1].high)))  # fmt: skip
        means = ", ".join(f"{iv_.mean:.2f}" for iv_ in ivs.values())
        out.append(claim_row(exp, f"{text} at every conv (points; t; means {means}; least "
                             f"favourable {name} shown)", iv, v,
                             paper="implied (not measured)"))  # fmt: skip
    return out


def per_pair_diagonal(rows: list[Row], arch: str, metric: str) -> dict[int, np.ndarray]:
    """pair -> diagonal of the layer x layer matrix of ``metric``."""
    out = {}
    for r in read(rows, "metrics"):
        values = r.result.matrix(metric) if r.job.arch == arch else None
        if values is not None:
            mat = np.array([[np.nan if v is None else v for v in row] for row in values])
            out[r.job.pair] = np.diag(mat)
    return out


def metric_claims(rows: list[Row], arch: str, sites: Sequence[str]) -> list[dict]:
    """Orthogonal ≥ G_ReLU Procrustes and linear CKA > G_ReLU-CKA at every layer (paired t)."""
    out = []
    for big, small, text in (
        ("orthogonal_procrustes", "grelu_procrustes", "orthogonal − G_ReLU Procrustes > 0"),
        ("cka", "grelu_cka", "linear CKA − G_ReLU-CKA > 0"),
    ):
        a, b = per_pair_diagonal(rows, arch, big), per_pair_diagonal(rows, arch, small)
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        diffs = np.stack([a[k] - b[k] for k in keys])
        ivs = {str(sites[i]) if i < len(sites) else f"site {i}": t_interval(diffs[:, i])
               for i in range(diffs.shape[1])}  # fmt: skip
        name, iv = _weakest(ivs, 0.0)
        out.append(claim_row("5 metrics (mCNN)", f"{text} at every layer (paired t over "
                             f"{len(keys)} pairs; weakest layer {name}, {_d(iv)})", iv,
                             all_of([verdict(x, 0.0) for x in ivs.values()]), 3))  # fmt: skip
    return out


def stitching_claims(rows: list[Row], arch: str) -> list[dict]:
    """G_ReLU − full stitching penalty > 0, mean over sites per pair (paired t over pairs)."""
    # Stitch-kind labels become families once, here (low_rank_2 and the like name none).
    by: dict = defaultdict(lambda: defaultdict(dict))
    for r in read(rows, "stitching"):
        c = r.job
        fam = find_family(c.layer_label) if c.arch == arch else None
        if fam is not None:
            by[fam][c.pair][c.site_index] = _points(r.result.penalty)
    f, g = by.get(GENERAL_LINEAR, {}), by.get(POSITIVE_MONOMIAL, {})
    keys = sorted(set(f) & set(g))
    if not keys:
        return []
    diffs = [np.mean([g[k][s] - f[k][s] for s in set(f[k]) & set(g[k])]) for k in keys]
    iv = t_interval(diffs)
    return [claim_row("4 stitching (mCNN)", f"G_ReLU − full (GL) penalty > 0, mean of sites "
                      f"(points; paired t over {len(keys)} pairs; {_d(iv)})", iv,
                      verdict(iv, 0.0), 1)]  # fmt: skip


def dissection_claims(rows: list[Row]) -> list[dict]:
    """Per layer, over seeds: a full rotation loses units (t), G_ReLU keeps them (within ±0.5)."""
    out = []
    for layer, d in sorted(dissection_table(rows).items()):
        counts = np.array(d["power_counts"], dtype=float)
        lost = t_interval(counts[:, 0] - counts[:, -1])
        out.append(claim_row("6 dissection", f"{layer}: units lost to a full rotation > 0 "
                             f"(ours {counts[:, 0].mean():.1f} → {counts[:, -1].mean():.1f} of "
                             f"{d['n_units']}; t over {len(counts)} seeds; {_d(lost)})", lost,
                             verdict(lost, 0.0), 1, "holds (counts unknown)"))  # fmt: skip
        pairs = [
            (i, g) for i, g in zip(d["identity"], d["group"]) if i is not None and g is not None
        ]
        if pairs:
            kept = t_interval([i - g for i, g in pairs])
            out.append(claim_row("6 dissection", f"{layer}: {d['group_name']} changes the count "
                                 "by less than 0.5 unit (identity − G count; t over seeds)", kept,
                                 verdict(kept, -0.5, 0.5), 1,
                                 "holds (counts unknown)"))  # fmt: skip
    return out
