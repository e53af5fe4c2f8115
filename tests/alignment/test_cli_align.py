"""``intertwiner align`` and ``intertwiner interpolate`` on tiny checkpoints (digits)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app
from intertwiner.symmetry import apply, random_elements, trace


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A (random init) and B = a transformed copy of A, plus an independent C."""
    folder = tmp_path_factory.mktemp("ck")
    cfg = dict(width=2, in_channels=1, input_size=8)
    a = models.build("myrtle_cnn", seed=0, **cfg)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = trace(a, x)
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(1)))
    c = models.build("myrtle_cnn", seed=1, **cfg)
    paths = {}
    for name, m in (("a", a), ("b", b), ("c", c)):
        paths[name] = folder / f"{name}.safetensors"
        checkpoints.save(m, paths[name], {"dataset": "digits", "split_seed": 0})
    return paths, folder


def test_align_recovers_copy_and_saves(ckpts):
    paths, folder = ckpts
    out = folder / "b-aligned.safetensors"
    r = CliRunner().invoke(app, ["align", str(paths["a"]), str(paths["b"]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "block1.act" in r.output and "->" in r.output
    aligned, meta = checkpoints.load(out)
    a, _ = checkpoints.load(paths["a"])
    for k, t in a.state_dict().items():
        if torch.is_floating_point(t):
            assert torch.allclose(aligned.state_dict()[k], t, rtol=1e-4, atol=1e-5), k
    assert meta["alignment"]["distance_after"] < 1e-4


def test_align_activations_json(ckpts):
    paths, folder = ckpts
    out = folder / "c-aligned.safetensors"
    args = ["align", str(paths["a"]), str(paths["c"]), "--out", str(out), "--method",
            "activations", "--samples", "200", "--json", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["method"] == "activations" and len(d["sites"]) == 4


def test_interpolate_with_alignment_and_plot(ckpts):
    paths, folder = ckpts
    png = folder / "barrier.png"
    args = ["interpolate", str(paths["a"]), str(paths["c"]), "--align", "--alphas", "3",
            "--samples", "200", "--eval-samples", "100", "--plot", str(png), "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "loss barrier" in r.output and "aligned (weights, full)" in r.output
    assert png.stat().st_size > 1000


def test_interpolate_json(ckpts):
    paths, _ = ckpts
    args = ["interpolate", str(paths["a"]), str(paths["b"]), "--alphas", "3", "--no-reset-bn",
            "--eval-samples", "50", "--json", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (curve,) = json.loads(r.output)
    assert curve["alphas"] == [0.0, 0.5, 1.0] and curve["reset_bn"] is False


def test_align_mismatched_models_is_a_clean_error(ckpts, tmp_path):
    paths, _ = ckpts
    other = models.build("myrtle_cnn", width=3, in_channels=1, input_size=8)
    p = tmp_path / "other.safetensors"
    checkpoints.save(other, p, {})
    r = CliRunner().invoke(
        app, ["align", str(paths["a"]), str(p), "--out", str(tmp_path / "x.safetensors")]
    )
    assert r.exit_code == 2
    assert "error:" in r.output


def test_interpolate_repair_json(ckpts):
    paths, _ = ckpts
    args = ["interpolate", str(paths["a"]), str(paths["c"]), "--alphas", "3", "--repair",
            "--samples", "200", "--eval-samples", "100", "--json", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (curve,) = json.loads(r.output)
    assert curve["repair"] is True and curve["alphas"] == [0.0, 0.5, 1.0]
    plain = ["interpolate", str(paths["a"]), str(paths["c"]), "--alphas", "3",
             "--samples", "200", "--eval-samples", "100", "--json", "-q"]  # fmt: skip
    (base,) = json.loads(CliRunner().invoke(app, plain).output)
    assert curve["losses"][0] == base["losses"][0] and curve["losses"][2] == base["losses"][2]
    assert curve["losses"][1] != base["losses"][1]  # the midpoint was repaired


def test_merge_of_a_model_and_its_transformed_copy_is_the_model(ckpts):
    paths, folder = ckpts
    out = folder / "merged.safetensors"
    args = ["merge", str(paths["a"]), str(paths["b"]), "--out", str(out), "--repair",
            "--samples", "200", "--eval-samples", "100", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "merged by weights, group full, REPAIR" in r.output
    merged, meta = checkpoints.load(out)
    a, _ = checkpoints.load(paths["a"])
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(merged(x), a(x), rtol=1e-4, atol=1e-4)
    assert meta["merge"]["repair"] is True and len(meta["merge"]["inputs"]) == 2
    r = CliRunner().invoke(app, ["merge", str(paths["a"]), "--out", str(out)])
    assert r.exit_code == 2 and "two or more" in r.output
