"""``intertwiner symmetries CHECKPOINT``: the sites table with verification errors, and --json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "r20.safetensors"
    model = models.build("resnet20", width=2, in_channels=1, input_size=8, blocks_per_stage=1)
    checkpoints.save(model, path, {"note": "untrained"})
    return path


def test_table(ckpt):
    result = CliRunner().invoke(app, ["symmetries", str(ckpt), "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "stem.act" in result.output and "layer2.0.shortcut.pad" in result.output
    assert "err f64" in result.output


def test_json_errors_are_at_float_precision(ckpt):
    result = CliRunner().invoke(app, ["symmetries", str(ckpt), "--json", "--batch", "4"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "ResNet20" and len(data["sites"]) == 6
    for site in data["sites"]:
        assert site["error_float64"] < 1e-12, site["name"]
        assert site["error_float32"] < 1e-5, site["name"]
    assert data["all_sites_error_float64"] < 1e-12


def test_missing_checkpoint_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["symmetries", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2
    assert "error:" in result.output


def test_coverage_is_printed_and_in_json(ckpt):
    result = CliRunner().invoke(app, ["symmetries", str(ckpt), "--batch", "4"])
    assert result.exit_code == 0, result.output
    # Every parameter of this ResNet moves but the head's bias (the outermost output side).
    assert (
        "interior (without the output side and unused parameters): tensors 1.000, scalars 1.000"
        in result.output
    )
    assert "head (bias): the model output" in result.output
    data = json.loads(
        CliRunner().invoke(app, ["symmetries", str(ckpt), "--json", "--batch", "4"]).output
    )
    cov = data["coverage"]
    assert cov["interior_tensors"] == 1.0 and cov["moved_tensors"] == cov["n_tensors"] - 1
    assert [f["tensors"] for f in cov["frozen"]] == [["head.bias"]]
