"""The HTML report: self-contained, every section drawn, comparison stated, opens in Chromium."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from _report_browser import chromium, inspect
from typer.testing import CliRunner

from intertwiner.cli import app
from intertwiner.report import build_report, render
from intertwiner.report.compare import comparison
from intertwiner.store import Store


def test_report_is_self_contained_and_complete(synthetic_run):
    text = render(synthetic_run)
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    # groups, stitching, 2 heatmaps, diagonals, sanity, dissection
    assert len(imgs) == 7 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'(src|href)="(http|//|file:)', text)  # nothing fetched from outside
    for heading in (
        "Table 1",
        "Model zoo",
        "Section 4",
        "Section 5",
        "Section 3.3",
        "Section 6",
        "Provenance",
        "beside the paper",
    ):
        assert heading in text
    assert "not run: dependency unavailable" in text
    assert "MNIST" in text and "CIFAR-10" in text  # the scale caveat


def test_comparison_states_differences(synthetic_run):
    store = Store(synthetic_run)
    rows = comparison({k: store.rows(k) for k in store.kinds()})
    stitched = [r for r in rows if r["quantity"] == "full penalty, block1.act"]
    assert len(stitched) == 1
    ours = float(stitched[0]["ours"].split(" ± ")[0])
    assert float(stitched[0]["difference"]) == pytest.approx(ours - 1.5, abs=0.011)
    procr = [r for r in rows if r["quantity"] == "grelu_procrustes same layer, block1.act"]
    assert procr and procr[0]["paper"] == "0.621"
    assert any(r["experiment"] == "Table 1 groups" and r["difference"] == "agrees" for r in rows)


def test_cli_report_and_results(synthetic_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(synthetic_run)])
    assert res.exit_code == 0 and (synthetic_run / "report.html").is_file()
    res = runner.invoke(app, ["results", str(synthetic_run), "--format", "json", "--kind", "zoo"])
    assert res.exit_code == 0 and res.output.count('"kind": "zoo"') == 4
    res = runner.invoke(app, ["results", str(synthetic_run), "--format", "csv"])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 1 + len(
        Store(synthetic_run)
    )
    res = runner.invoke(app, ["results", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "intertwiner reproduce --out" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium)")
@pytest.mark.parametrize("width", [1280, 700])
def test_report_in_headless_chromium(synthetic_run, tmp_path, width):
    path = build_report(synthetic_run)
    shot = tmp_path / f"report_{width}.png"
    check = inspect(path, shot, width=width)
    assert check["images"] == 7
    assert all(w > 0 for w in check["widths"]), check  # every figure decoded
    assert check["scrollWidth"] <= check["clientWidth"], check  # no horizontal overflow
    assert check["overflowing"] == [], check
    assert shot.is_file() and shot.stat().st_size > 10_000
    keep = os.environ.get("INTERTWINER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, keep)


def test_report_reads_as_prose_with_module_names(synthetic_run):
    text = render(synthetic_run)
    assert "block1.act" in text and "act2*" in text  # names, and the residual-branch mark
    assert "site 0" not in text
    assert not re.search(r"\[\d+(, \d+)*\] ", text)  # no Python list syntax in prose
    assert "epoch(s)" not in text
    assert re.search(r"<details><summary>[^<]*</summary><pre>", text)  # provenance collapsed
    assert "verify_error_float64" not in text  # short headers


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_at_1400px_hides_no_column(synthetic_run, tmp_path):
    path = build_report(synthetic_run)
    check = inspect(path, tmp_path / "report_1400.png", width=1400)
    assert check["scrollWidth"] <= check["clientWidth"], check
    assert check["clipped"] == [], check  # no table scrolls sideways inside its box
    assert check["details"] == 1 and check["detailsOpen"] == 0, check


def test_results_long_format_is_tidy(synthetic_run):
    import csv
    import io

    res = CliRunner().invoke(app, ["results", str(synthetic_run), "--format", "long"])
    assert res.exit_code == 0, res.output
    lines = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {"kind", "job", "metric", "i", "j", "value"} <= set(lines[0])
    assert not any(str(v).startswith("[") for line in lines for v in line.values())  # no JSON
    cells = [x for x in lines if x["kind"] == "metrics" and x["metric"] == "cka"]
    # one line per matrix cell, named by site: myrtle_cnn 4 x 4 and mlp 2 x 2, two pairs each
    assert len(cells) == 2 * 16 + 2 * 4
    assert {x["i_name"] for x in cells} >= {"block1.act", "act2"}
    assert float(cells[0]["value"]) == pytest.approx(
        Store(synthetic_run).rows("metrics")[0].metrics["cka"][0][0]
    )
