"""Kornblith's layer-identification test (``benchmark-measures``): the scoring, and the command."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from intertwiner.cli import app
from intertwiner.errors import InvalidOptionError
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
        s = mg.score(sets, spec)
        assert s.per_seed == [1.0, 1.0, 1.0], spec
        assert s.accuracy.mean == 1.0


def test_config_is_checked():
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(seeds=1)
    with pytest.raises(InvalidOptionError):
        mg.GroundingConfig(width=0)


def test_command_trains_a_tiny_zoo_and_ranks(tmp_path):
    args = ["benchmark-measures", "--seeds", "2", "--depth", "2", "--width", "8", "--epochs", "1",
            "--inputs", "40", "--measures", "cka,svcca", "-q", "--out", str(tmp_path)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "measures.json").read_text())
    names = [s["name"] for s in saved["scores"]]
    assert sorted(names) == ["cka", "svcca"]
    for s in saved["scores"]:
        assert 0.0 <= s["accuracy"]["mean"] <= 1.0 and len(s["per_seed"]) == 2
    assert "99.3" in r.output  # Kornblith's published linear CKA value beside ours
