"""``intertwiner compare`` on feature files and on tiny checkpoints (digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app
from intertwiner.metrics import metric, pairwise
from intertwiner.symmetry import apply, random_elements, trace


def test_feature_files_give_the_pairwise_matrix(tmp_path):
    g = np.random.default_rng(0)
    base = g.standard_normal((30, 5, 2, 2))
    arrays = [np.maximum(base + 0.5 * g.standard_normal(base.shape), 0) for _ in range(3)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"m{i}.npy")
        np.save(paths[-1], a)
    out = tmp_path / "out"
    args = ["compare", *map(str, paths), "--metrics", "cka,group_cka", "-q", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "compare.json").read_text())
    want = pairwise(arrays, "group_cka", progress=False).matrix()
    got = np.array(saved["group_cka[positive_monomial]"]["matrices"][0]["values"])
    assert np.allclose(got, want, rtol=1e-12)
    assert (out / "compare.csv").read_text().startswith("metric,layer_a,layer_b")
    assert any(p.suffix == ".png" for p in out.iterdir())
    assert "m0" in r.output and "group_cka" in r.output


def test_safetensors_features_two_inputs_layer_by_layer(tmp_path):
    torch.manual_seed(0)
    for name in ("a", "b"):
        save_file({"x": torch.randn(20, 4).relu(), "y": torch.randn(20, 3).relu()},
                  str(tmp_path / f"{name}.safetensors"))  # fmt: skip
    args = ["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
            "--metrics", "cka", "-q", "--out", str(tmp_path / "o")]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "rows: a layers, columns: b layers" in r.output
    assert (tmp_path / "o" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_compare_on_their_dataset(tmp_path):
    cfg = dict(width=2, in_channels=1, input_size=8)
    a = models.build("myrtle_cnn", seed=0, **cfg)
    spec = trace(a, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(1)))
    layer = models.sites(a)[0]
    paths = []
    for name, m in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.safetensors")
        checkpoints.save(m, paths[-1], {"dataset": "digits", "split_seed": 0})
    args = ["compare", *map(str, paths), "--layers", layer, "--samples", "64", "-q",
            "--metrics", "procrustes_similarity:positive_monomial,cka"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    # B is A transformed by its own symmetries: G_ReLU-Procrustes sees them as the same.
    row = [ln for ln in r.output.splitlines() if ln.startswith(layer[:15])][0]
    assert float(row.split()[-1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["only.npy"], "at least two"),
        (["missing.npy", "other.npy"], "does not exist"),
    ],
)
def test_bad_inputs_exit_with_one_line(tmp_path, args, message):
    r = CliRunner().invoke(app, ["compare", *[str(tmp_path / a) for a in args]])
    assert r.exit_code == 2
    assert message in r.output


def test_value_matches_the_metric_function(tmp_path):
    x, y = torch.randn(25, 6).relu(), torch.randn(25, 6).relu()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                                 "--metrics", "cka", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    row = [ln for ln in r.output.splitlines() if ln.startswith("features")][0]
    assert float(row.split()[-1]) == pytest.approx(metric("cka")(x, y), abs=1e-4)
