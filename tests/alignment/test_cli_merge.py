"""``intertwiner merge A B [C ...]`` on tiny checkpoints (digits)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.spec import permutation_part


def _save(folder, name, model):
    path = folder / f"{name}.safetensors"
    checkpoints.save(model, path, {"dataset": "digits", "split_seed": 0})
    return str(path)


def test_merge_three_permuted_copies_is_the_model(tmp_path):
    cfg = dict(width=4, in_channels=1, input_size=8, activation="tanh", batchnorm=False)
    a = models.build("myrtle_cnn", seed=0, **cfg)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = trace(a, x)
    paths = []
    for s in (1, 2, 3):
        els = random_elements(spec, torch.Generator().manual_seed(s))
        copy = apply(a, spec, {k: permutation_part(g) for k, g in els.items()})
        paths.append(_save(tmp_path, f"c{s}", copy))
    out = tmp_path / "merged.safetensors"
    args = ["merge", *paths, "--out", str(out), "--eval-samples", "100", "--samples", "200",
            "--json", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["reference"] == "mean" and len(d["inputs"]) == 3
    rep = d["report"]
    accs = {round(i["accuracy"], 9) for i in rep["inputs"]}
    assert len(accs) == 1 and rep["merged"]["accuracy"] == rep["inputs"][0]["accuracy"]
    merged, meta = checkpoints.load(out)
    assert meta["merge"]["inputs"] == paths
    a.eval(), merged.eval()
    with torch.no_grad():
        assert torch.allclose(merged(x), a(x), rtol=1e-5, atol=1e-6)


def test_merge_table_and_bad_options(tmp_path):
    cfg = dict(width=2, in_channels=1, input_size=8)
    paths = [_save(tmp_path, f"m{s}", models.build("myrtle_cnn", seed=s, **cfg)) for s in (0, 1)]
    out = str(tmp_path / "m.safetensors")
    r = CliRunner().invoke(
        app, ["merge", *paths, "--out", out, "--reference", "1", "--eval-samples", "50",
              "--samples", "100", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "ensemble (probabilities)" in r.output and "saved" in r.output
    for bad, word in (
        (["--reference", "middle"], "--reference"),
        (["--reference", "5"], "out of range"),
        (["--weights", "1,2,3"], "--weights"),
    ):
        r = CliRunner().invoke(app, ["merge", *paths, "--out", out, "--no-report", *bad])
        assert r.exit_code == 2 and word in r.output, r.output
    r = CliRunner().invoke(app, ["merge", paths[0], "--out", out])
    assert r.exit_code == 2 and "two or more" in r.output


def test_merge_zip_partial_with_repair(tmp_path):
    """``--zip K``: a CNN zipped with a transformed copy of itself at K sites (the rest two
    heads, averaged) and REPAIRed scores what the CNN scores; the saved weights load back."""
    cfg = dict(width=4, in_channels=1, input_size=8, batchnorm=False)
    a = models.build("myrtle_cnn", seed=0, **cfg)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = trace(a, x)
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(1)))
    paths = [_save(tmp_path, "a", a), _save(tmp_path, "b", b)]
    out = tmp_path / "zipped.safetensors"
    args = ["merge", *paths, "--out", str(out), "--zip", "2", "--repair", "--eval-samples",
            "100", "--samples", "300", "--json", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["zip"]["k"] == 2 and d["zip"]["depth"] == len(spec.sites) and d["zip"]["repair"]
    rep = d["report"]
    assert abs(rep["merged"]["accuracy"] - rep["inputs"][0]["accuracy"]) < 0.02
    meta = checkpoints.read_metadata(out)
    assert meta["merge"]["zip"]["heads"] == "average" and meta["widened"]
    zipped, _ = checkpoints.load(out)  # rebuilt from the config, the wider layers included
    with torch.no_grad():
        assert zipped(x).shape == a(x).shape
    for bad, word in ((["--zip", "two"], "--zip"), (["--zip", "-1"], "--zip")):
        r = CliRunner().invoke(app, ["merge", *paths, "--out", str(out), "--no-report", *bad])
        assert r.exit_code == 2 and word in r.output, r.output
    r = CliRunner().invoke(app, ["merge", *paths, paths[0], "--out", str(out), "--zip", "all"])
    assert r.exit_code == 2 and "two checkpoints" in r.output, r.output
    r = CliRunner().invoke(app, ["merge", *paths, "--out", str(out), "--zip", "all",
                                 "--zip-heads", "concat", "-q"])  # fmt: skip
    assert r.exit_code == 0 and "zipped 4 of 4 sites" in r.output, r.output
    assert "checkpoints.load rebuilds it" in r.output, r.output
