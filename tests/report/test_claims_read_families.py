"""Reports read row labels as families once (``groups.find_family``): every spelling of a family
lands in the same claim, labels that name no family (controls, low-rank kinds) are left out, and the
numbers are those computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from intertwiner.report import claims
from intertwiner.report.figures import dissection_table
from intertwiner.stats import HOLDS
from intertwiner.store import Row


def _row(kind, config, metrics):
    return Row(key=str(config), kind=kind, config=config, metrics=metrics, started=0.0,
               seconds=0.0, version="test", created=0.0)  # fmt: skip


def test_stitching_claim_is_perm_scale_minus_full_whatever_the_spelling():
    rng = np.random.default_rng(0)
    rows, diffs = [], []
    for pair in range(4):
        per_site = []
        for site in range(3):
            pen = {k: float(rng.uniform(0, 0.3)) for k in ("gl", "G_ReLU", "low_rank_2")}
            pen["G_ReLU"] += 0.3  # a clear effect, so the verdict is "holds"
            per_site.append(100 * (pen["G_ReLU"] - pen["gl"]))
            for kind, p in pen.items():
                config = {"arch": "mlp", "pair": pair, "site_index": site, "layer_label": kind}
                rows.append(_row("stitching", config, {"penalty": p}))
        diffs.append(np.mean(per_site))
    (out,) = claims.stitching_claims(rows, "mlp")
    assert float(out["ours"]) == pytest.approx(np.mean(diffs), abs=0.051)  # shown to 1 digit
    assert "4 pairs" in out["quantity"] and out["verdict"] == HOLDS


def test_sanity_claims_compare_each_absorbable_group_with_orthogonal():
    rows = []
    for layer in range(2):
        for rep in range(4):
            for group, pen in (("identity", 0.0), ("permutation", 0.02), ("G_ReLU", 0.01),
                               ("orthogonal", 0.05 + 0.01 * rep)):  # fmt: skip
                config = {"activation": "relu", "group": group, "layer": layer, "repeat": rep}
                rows.append(_row("sanity", config, {"penalty": pen}))
    out = claims.sanity_claims(rows)
    # G_ReLU first, then its permutation part; the identity control makes no claim
    refs = [r["quantity"] for r in out]
    assert len(out) == 6
    assert all("G_ReLU" in q for q in refs[:3]) and all("permutation" in q for q in refs[3:])
    assert not claims.sanity_claims([r for r in rows if r.config["group"] != "orthogonal"])


def test_dissection_table_collects_the_haar_rotations_only():
    counts = {"identity": 10, "G_ReLU": 9, "orthogonal0": 3, "orthogonal1": 5, "power0.5": 7}
    metrics = {"layer": "act1", "powers": [0.0, 1.0], "power_counts": [10, 4], "n_units": 16,
               "group": "G_ReLU", "counts": counts}  # fmt: skip
    table = dissection_table([_row("dissection", {}, metrics)])
    assert table["act1"]["orthogonal"] == [3, 5]
    assert table["act1"]["identity"] == [10] and table["act1"]["group"] == [9]
