"""Closed-form absorbability, intervals and verdicts, the dry run, and the paper preset smoke run."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats as st
from typer.testing import CliRunner

from intertwiner import models
from intertwiner.data import load
from intertwiner.experiments.absorb import AbsorbConfig, absorb_run
from intertwiner.experiments.sanity import UnknownTransformKindError, resolve_kind
from intertwiner.experiments.surgery import next_parametric
from intertwiner.report import claims
from intertwiner.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    bootstrap_interval,
    detectable_effect,
    t_interval,
    verdict,
    welch_interval,
)
from intertwiner.store import Row
from intertwiner.training import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    return load("synthetic", n_train=160, n_test=80, input_size=16, num_classes=4)


@pytest.fixture(scope="module")
def trained(data):
    model = models.build("myrtle_cnn", width=3, batchnorm=False, in_channels=1, input_size=16,
                         num_classes=4, seed=0)  # fmt: skip
    train(model, data, TrainConfig(epochs=2, progress=False, num_threads=1, seed=0))
    return model.eval()


def test_next_parametric_skips_pooling_and_the_inserted_map(trained, data):
    x = data.test.get_batch(torch.arange(2))[0]
    assert next_parametric(trained, "block2.act", x) == "block3.conv"  # block2.pool in between
    assert next_parametric(trained, "block4.act", x) == "head"


@pytest.mark.parametrize("site", ["block1.act", "block2.act", "block3.act"])
def test_a_group_map_is_absorbed_exactly_and_an_orthogonal_one_is_not(trained, data, site):
    cfg = AbsorbConfig(max_rows=5000, num_threads=1)
    ident = absorb_run(trained, site, "identity", 0, data, cfg)
    grelu = absorb_run(trained, site, "g_relu", 0, data, cfg)
    orth = absorb_run(trained, site, "orthogonal", 0, data, cfg)
    for row in (ident, grelu):
        assert row["residual"] < 1e-8 and row["drop"] == 0.0, row
    assert grelu["family"] == "positive_monomial"
    assert orth["residual"] > 1e-3  # relu(M x) is not linear in relu(x)
    assert orth["layer"] == grelu["layer"] == next_parametric(trained, site, data.test.get_batch(
        torch.arange(2))[0])  # fmt: skip
    again = absorb_run(trained, site, "orthogonal", 0, data, cfg)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in orth.items() if k != "seconds"
    }


def test_resolve_kind_is_the_one_reader_of_kind_names():
    relu = torch.nn.ReLU()
    assert resolve_kind("identity", relu) is None
    assert resolve_kind("group", relu).name == "positive_monomial"
    assert resolve_kind(" G_ReLU ", relu).name == "positive_monomial"
    assert resolve_kind("o", relu).name == "orthogonal"
    with pytest.raises(UnknownTransformKindError, match="unknown transform kind"):
        resolve_kind("rotation", relu)


def test_t_interval_matches_the_textbook_formula():
    x = [1.0, 2.0, 4.0, 7.0]
    iv = t_interval(x)
    half = st.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert iv.mean == pytest.approx(3.5) and iv.high - iv.mean == pytest.approx(half)
    assert iv.effect == pytest.approx(3.5 / np.std(x, ddof=1))
    one = t_interval([3.0])
    assert math.isinf(one.low) and verdict(one, 0.0) == INCONCLUSIVE
    exact = t_interval([0.0, 0.0, 0.0])
    assert (exact.low, exact.high) == (0.0, 0.0) and verdict(exact, -0.1, 0.1) == HOLDS


def test_welch_interval_matches_scipy_and_verdicts_have_three_values():
    a, b = [5.0, 6.0, 7.0, 6.5, 5.5], [1.0, 2.5, 1.5, 2.0, 3.0]
    iv = welch_interval(a, b)
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high))
    assert verdict(iv, 0.0) == HOLDS
    assert verdict(welch_interval(b, a), 0.0) == FAILS
    assert verdict(welch_interval(a, [6.0, 5.0, 7.0]), 0.0) == INCONCLUSIVE


def test_bootstrap_is_seeded_and_detectable_effect_shrinks_with_n():
    x = np.random.default_rng(0).normal(size=30)
    assert bootstrap_interval(x, seed=1) == bootstrap_interval(x, seed=1)
    assert bootstrap_interval(x).method == "bootstrap"
    d5, d20 = detectable_effect(1.0, 5), detectable_effect(1.0, 20)
    assert d20 < d5 and detectable_effect(1.0, 5, two_sample=False) < d5
    # n = 20 per group, sd 1: the textbook two-sample figure at 80% power is about 0.9
    assert d20 == pytest.approx(0.91, abs=0.03)


def _row(kind, config, metrics):
    return Row(key=str(config), kind=kind, config=config, metrics=metrics, started=0.0,
               seconds=0.0, version="test", created=0.0)  # fmt: skip


def test_sanity_and_absorb_claims_give_verdicts_with_power():
    rows = []
    for layer in range(3):
        for rep in range(5):
            for group, pen in (("G_ReLU", 0.01 + 0.001 * rep), ("orthogonal", 0.05 + 0.002 * rep)):
                rows.append(_row("sanity", {"activation": "relu", "group": group, "layer": layer,
                                            "repeat": rep}, {"penalty": pen}))  # fmt: skip
    out = claims.sanity_claims(rows)
    assert len(out) == 4 and all(r["verdict"] == HOLDS for r in out)
    assert "detectable ≥" in out[0]["quantity"] and out[0]["95% CI"].startswith("[")
    ab = [_row("absorb", {"activation": "relu", "group": g, "layer": lay, "repeat": r},
               {"drop": d}) for lay in range(3) for r in range(3)
          for g, d in (("G_ReLU", 0.0), ("orthogonal", 0.03 + 0.01 * r))]  # fmt: skip
    res = {r["quantity"].split(":")[0]: r["verdict"] for r in claims.absorb_claims(ab)}
    assert res == {"G_ReLU map absorbed": HOLDS, "orthogonal map not absorbed": HOLDS}


def test_reproduce_dry_run_prints_jobs_beside_the_protocol(tmp_path, monkeypatch):
    from intertwiner.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["reproduce", "--preset", "paper", "--dry-run"])
    assert res.exit_code == 0, res.output
    for text in ("== zoo", "== sanity", "== absorb", "== stitching", "paper: Section 3.3",
                 "StepLR", "32 pairs", "job 1:", "cifar10", "== grounding",
                 "Kornblith et al. 2019"):  # fmt: skip
        assert text in res.output, text
    assert list(tmp_path.iterdir()) == []  # nothing written
    bad = CliRunner().invoke(app, ["reproduce", "--preset", "nope", "--dry-run"])
    assert bad.exit_code == 2
    assert CliRunner().invoke(app, ["reproduce", "--preset", "quick"]).exit_code == 2  # no --out


def write_fake_cifar(root, n: int = 24, seed: int = 0):
    """A tiny stand-in for the official ``cifar-10-batches-py`` folder (the same pickled layout)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(n)]
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return root


@pytest.mark.slow
def test_paper_preset_shrunk_runs_end_to_end_on_a_fake_cifar_folder(tmp_path, monkeypatch):
    from intertwiner.experiments import pipeline, presets
    from intertwiner.store import Store

    root = write_fake_cifar(tmp_path / "data")
    small = presets.shrink(presets.PRESETS["paper"])
    monkeypatch.setitem(presets.PRESETS, "paper_smoke", small)
    summary = pipeline.reproduce(tmp_path / "run", preset="paper_smoke", data_dir=str(root),
                                 workers=1, progress=False)  # fmt: skip
    assert summary["first_failure"] is None, summary["first_failure"]
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {s: "done" for s in ("groups", "zoo", "metrics", "stitching", "sanity",
                                           "absorb", "dissection", "grounding_zoo",
                                           "grounding")}  # fmt: skip
    kinds = Store(tmp_path / "run").kinds()
    assert {"zoo", "metrics", "stitching", "sanity", "absorb", "dissection"} <= set(kinds)
    assert "verdict" in (tmp_path / "run" / "report.html").read_text()


def test_cli_sanity_refit_prints_the_closed_form_table(tmp_path):
    from intertwiner import checkpoints
    from intertwiner.cli import app

    ck = tmp_path / "m.safetensors"
    model = models.build("myrtle_cnn", width=2, batchnorm=False, in_channels=1, input_size=16,
                         seed=0)  # fmt: skip
    checkpoints.save(model, ck, {"dataset": "synthetic"})
    res = CliRunner().invoke(app, ["sanity", "--data", "synthetic", "--checkpoint", str(ck),
                                   "--refit", "--sites", "block2.act", "--kinds",
                                   "identity,group,orthogonal", "--repeats", "2", "--out",
                                   str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = {ln.split()[1]: ln for ln in res.output.splitlines() if ln.startswith("block2.act")}
    assert set(lines) == {"identity", "group", "orthogonal"}
    assert " 0.000 ± 0.000" in lines["group"] and "block3.conv" in lines["group"]
    assert (tmp_path / "o" / "refit_rows.json").is_file()
