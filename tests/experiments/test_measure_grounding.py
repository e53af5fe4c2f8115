"""The grounding tests of ``benchmark-measures`` (layer identification, specificity, monotonicity,
prediction agreement): each scoring rule on hand-made values, on synthetic zoos, and the command."""

import json

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from intertwiner import stats as stats_mod
from intertwiner.cli import app
from intertwiner.errors import InvalidInputError, InvalidOptionError
from intertwiner.experiments import measure_grounding as mg


def test_layer_identification_counts_unique_best_matches():
    k, layers = 3, 4
    values = np.zeros((layers, layers, k, k))
    for i in range(layers):
        values[i, i] = 1.0  # every layer is most similar to its counterpart
    assert np.allclose(mg.layer_identification(values, True), 1.0)
    assert np.allclose(mg.layer_identification(-values, False), 1.0)  # distances: smallest wins
    values[2, 3] = 1.0  # layer 2 ties with layer 3 in every pair: a miss
    assert np.allclose(mg.layer_identification(values, True), 3 / 4)
    values[0, 1, 0, 1] = 2.0  # model 0's layer 0 matched to model 1's layer 1
    per_seed = mg.layer_identification(values, True)
    assert per_seed[0] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert per_seed[2] == pytest.approx(3 / 4)


def test_identical_models_identify_every_layer():
    """The same features as every 'seed': each measure's best match is the layer itself."""
    g = torch.Generator().manual_seed(0)
    layers = {f"l{i}": torch.randn(60, 6, generator=g, dtype=torch.float64).relu()
              for i in range(4)}  # fmt: skip
    sets = [dict(layers) for _ in range(3)]
    for spec in ("cka", "svcca", "pwcca", "mutual_knn", "shape_distance", "soft_matching_distance"):
        s = mg.score(sets, spec).tests["layer_identification"]
        assert s.per_seed == [1.0, 1.0, 1.0], spec
        assert s.interval.mean == 1.0


def test_config_is_checked():
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(seeds=1)
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(width=0)


def test_specificity_counts_seed_pairs_above_random_label_pairs():
    k, r, layers = 3, 2, 4
    same = np.zeros((layers, k + r, k + r))
    same[:, :k, :k] = 1.0  # seeds alike, random-label models unlike them
    assert np.allclose(mg.specificity(same, k, True), 1.0)
    assert np.allclose(mg.specificity(-same, k, False), 1.0)  # a distance: smaller is closer
    assert np.allclose(mg.specificity(same, k, False), 0.0)
    same[:, 0, k] = 1.0  # model 0 ties with the first random model at every layer
    per_seed = mg.specificity(same, k, True)
    assert per_seed[0] == pytest.approx(0.75) and per_seed[1] == 1.0
    same[1, 0, k + 1] = 5.0  # and is closer to the second one at layer 1
    assert mg.specificity(same, k, True)[0] == pytest.approx(0.75 - 2 / (2 * 2 * layers))
    with pytest.raises(InvalidOptionError):
        mg.specificity(same, k + r, True)  # no random-label model


def test_monotonicity_is_minus_spearman_of_similarity_with_depth():
    layers, k = 5, 2
    values = np.zeros((layers, layers, k, k))
    values[0, 1:, 0, 0] = [0.9, 0.7, 0.5, 0.1]  # falls with depth: 1
    values[0, 1:, 1, 1] = [0.1, 0.5, 0.7, 0.9]  # rises: -1
    assert np.allclose(mg.monotonicity(values, True), [1.0, -1.0])
    assert np.allclose(mg.monotonicity(values, False), [-1.0, 1.0])
    values[0, 1:, 1, 1] = [0.2, 0.1, 0.4, 0.3]
    rho = stats.spearmanr([0.2, 0.1, 0.4, 0.3], [1, 2, 3, 4]).statistic
    assert mg.monotonicity(values, True)[1] == pytest.approx(-rho)
    values[0, 1:, 1, 1] = 0.3  # constant: no order
    assert mg.monotonicity(values, True)[1] == 0.0
    with pytest.raises(InvalidOptionError):
        mg.monotonicity(values[:2, :2], True)


def test_prediction_agreement_rank_correlates_per_seed():
    g = np.random.default_rng(0)
    agree = g.uniform(size=(5, 5))
    assert np.allclose(mg.prediction_agreement(agree, agree, 3, True), 1.0)
    assert np.allclose(mg.prediction_agreement(np.exp(agree), agree, 3, True), 1.0)  # ranks only
    assert np.allclose(mg.prediction_agreement(agree, agree, 3, False), -1.0)
    sim = agree.copy()
    sim[0, 1], sim[0, 2] = agree[0, 2], agree[0, 1]  # swap two partners of model 0
    others = [1, 2, 3, 4]
    want = stats.spearmanr(sim[0, others], agree[0, others]).statistic
    got = mg.prediction_agreement(sim, agree, 3, True)
    assert got[0] == pytest.approx(want) and want < 1.0 and got[1] == 1.0


def test_agreement_matrix():
    preds = [torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 1, 2, 0])]
    a = mg.agreement_matrix(preds)
    assert np.allclose(np.diag(a), 1.0) and np.allclose(a, a.T)
    assert a[0, 1] == 0.5 and a[0, 2] == 0.75 and a[1, 2] == 0.75


def _synthetic_zoo(seeds=3, randoms=2, layers=4, n=80, width=6):
    """Seeds share a random walk over layers (plus their own noise); random-label models have
    their own walk. Predictions: seeds agree more with each other than with the random models."""
    g = torch.Generator().manual_seed(0)

    def walk():
        f, out = torch.randn(n, width, generator=g, dtype=torch.float64), []
        for _ in range(layers):
            out.append(f)
            f = f + 0.8 * torch.randn(n, width, generator=g, dtype=torch.float64)
        return out

    shared = walk()
    noise = lambda: 0.2 * torch.randn(n, width, generator=g, dtype=torch.float64)  # noqa: E731
    sets = [{f"l{i}": f + noise() for i, f in enumerate(shared)} for _ in range(seeds)]
    rand = [{f"l{i}": f for i, f in enumerate(walk())} for _ in range(randoms)]
    truth = torch.randint(0, 10, (200,), generator=g)
    preds = []
    for flip in [0.1 * (i + 1) for i in range(seeds)] + [0.9] * randoms:
        wrong = torch.rand(200, generator=g) < flip
        preds.append(torch.where(wrong, torch.randint(0, 10, (200,), generator=g), truth))
    return sets, rand, preds


@pytest.mark.parametrize("spec", ["cka", "linear_predictivity", "procrustes_distance"])
def test_synthetic_zoo_passes_every_test(spec):
    sets, rand, preds = _synthetic_zoo()
    s = mg.score(sets, spec, random_sets=rand, predictions=preds, tests=mg.TESTS)
    assert set(s.tests) == set(mg.TESTS)
    assert s.tests["layer_identification"].interval.mean == 1.0
    assert s.tests["specificity"].interval.mean == 1.0
    assert s.tests["monotonicity"].interval.mean == 1.0  # the walk drifts away from layer 1
    assert s.tests["prediction"].interval.mean > 0.5
    for t in s.tests.values():
        assert len(t.per_seed) == 3 and t.interval.low <= t.interval.mean <= t.interval.high
        assert -1.0 <= t.interval.low and t.interval.high <= 1.0  # clipped to the score's range


def test_report_ranks_by_mean_rank_over_tests():
    def sc(name, means):
        out = mg.MeasureScore(name)
        for t, v in zip(mg.TESTS, means, strict=True):
            out.tests[t] = mg.TestInterval(stats_mod.t_interval([v, v]), [v, v])
        return out

    report = mg.GroundingReport(mg.GroundingConfig(), [0.9])
    report.scores = [sc("a", [0.1, 0.9, 0.5, 0.5]), sc("b", [0.9, 0.8, 0.9, 0.9]),
                     sc("c", [0.5, 0.1, 0.1, 0.1])]  # fmt: skip
    assert [s.name for s in report.ranked()] == ["b", "a", "c"]
    assert report.scores[0].rank == pytest.approx((3 + 1 + 2 + 2) / 4)
    table = report.table()
    assert table.splitlines()[1].startswith("b ") and "90.0" in table


def test_config_checks_tests():
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(tests=("layer_identification", "bogus"))
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(random_labels=0)  # specificity needs one
    mg.GroundingConfig(random_labels=0, tests=("layer_identification",))
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(depth=2)  # monotonicity needs two distances


def test_command_quick_runs_every_test(tmp_path):
    args = ["benchmark-measures", "--quick", "--measures", "cka,linear_predictivity", "-q",
            "--out", str(tmp_path), "--no-cache"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "measures.json").read_text())
    assert saved["config"]["seeds"] == mg.QUICK["seeds"]
    assert len(saved["random_label_accuracy"]) == mg.QUICK["random_labels"]
    assert sorted(s["name"] for s in saved["scores"]) == ["cka", "linear_predictivity"]
    for s in saved["scores"]:
        assert set(s["tests"]) == set(mg.TESTS)
        for t in s["tests"].values():
            assert len(t["per_seed"]) == mg.QUICK["seeds"]
            assert (
                -1.0
                <= t["interval"]["low"]
                <= t["interval"]["mean"]
                <= t["interval"]["high"]
                <= 1.0
            )
    for title in mg.TITLES.values():
        assert title in r.output
    assert "99.3" in r.output


def test_command_trains_a_tiny_zoo_and_ranks(tmp_path):
    args = ["benchmark-measures", "--seeds", "2", "--depth", "2", "--width", "8", "--epochs", "1",
            "--inputs", "40", "--measures", "cka,svcca", "--tests", "layer_identification",
            "--random-labels", "0", "-q", "--out", str(tmp_path), "--no-cache"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "measures.json").read_text())
    names = [s["name"] for s in saved["scores"]]
    assert sorted(names) == ["cka", "svcca"]
    for s in saved["scores"]:
        assert list(s["tests"]) == ["layer_identification"]
        t = s["tests"]["layer_identification"]
        assert 0.0 <= t["interval"]["mean"] <= 1.0 and len(t["per_seed"]) == 2
    assert "99.3" in r.output  # Kornblith's published linear CKA value beside ours


def test_command_refuses_an_out_folder_under_a_file_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(
        app, ["benchmark-measures", "--quick", "-q", "--out", str(blocker / "o")]
    )
    assert r.exit_code != 0 and "is a file" in r.output
    assert "zoo:" not in r.output  # refused before any training


def _conv_sets(seeds=3, n=30, width=4):
    """Identical 'seed' models with conv layers of two spatial sizes (6x6 then 3x3)."""
    g = torch.Generator().manual_seed(1)
    layers = {}
    for i in range(4):
        size = 6 if i < 2 else 3
        layers[f"l{i}"] = torch.randn(n, width, size, size, generator=g, dtype=torch.float64).relu()
    return [dict(layers) for _ in range(seeds)]


@pytest.mark.parametrize(
    "spec", ["cka", "group_cka", "procrustes_distance:positive_monomial", "cca", "rsa",
             "shape_distance:positive_monomial", "soft_matching_distance", "mutual_knn"],
)  # fmt: skip
def test_conv_layers_of_different_sizes_enter_every_measure(spec):
    """Position-wise measures compare a 3x3 layer with a 6x6 one by upsampling (the paper's
    choice); identical models then identify every layer."""
    s = mg.score(_conv_sets(), spec).tests["layer_identification"]
    assert s.per_seed == [1.0, 1.0, 1.0], spec


def test_cnn_zoo_config_and_plain_cnn_layers():
    cfg = mg.GroundingConfig.for_zoo("cnn")
    assert (cfg.depth, cfg.width, cfg.zoo) == (10, 16, "cnn")
    assert "linear_predictivity" not in cfg.measures  # too slow on conv layers (documented)
    assert mg.GroundingConfig.for_zoo("cnn", depth=4).depth == 4
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig.for_zoo("transformer")
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(lr=0.0)


def test_command_cnn_zoo_trains_once_then_reads_its_cache(tmp_path, monkeypatch):
    args = ["benchmark-measures", "--zoo", "cnn", "--quick", "--measures",
            "cka,procrustes_distance:positive_monomial", "--tests", "layer_identification",
            "-q", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "a")]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "plain_cnn 3x8 on mnist" in r.output
    cached = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == mg.QUICK_CNN["seeds"] + mg.QUICK_CNN["random_labels"]
    first = json.loads((tmp_path / "a" / "measures.json").read_text())

    def refuse(*a, **k):
        raise AssertionError("trained although every model is cached")

    monkeypatch.setattr(mg.training, "train", refuse)
    r = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    second = json.loads((tmp_path / "b" / "measures.json").read_text())
    assert second["scores"] == first["scores"] and second["test_accuracy"] == first["test_accuracy"]


def test_a_pair_the_measure_cannot_compare_is_an_error_not_a_miss(monkeypatch):
    """Without upsampling, Procrustes cannot compare a 3x3 layer with a 6x6 one: the pairwise
    matrix has NaN cells, which the tests must refuse rather than count as misses."""
    monkeypatch.setattr(mg, "_spatial_sizes_differ", lambda sets: False)
    with pytest.raises(InvalidInputError, match="could not compare"):
        mg.score(_conv_sets(), "procrustes_distance")
