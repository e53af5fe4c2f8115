"""``intertwiner canonicalize``, ``fingerprint`` and ``permutation-spec`` on checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.check import _run

CFG = {"width": 2, "in_channels": 1, "input_size": 8, "blocks_per_stage": 1}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A, a copy of A moved by a random element of its group, and B (another seed)."""
    root = tmp_path_factory.mktemp("ws")
    a = models.build("resnet20", seed=0, **CFG).eval()
    b = models.build("resnet20", seed=1, **CFG).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = trace(a, x)
    moved = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(1), torch.float32))
    paths = {}
    for name, m in (("a", a), ("a_moved", moved), ("b", b)):
        paths[name] = root / f"{name}.safetensors"
        checkpoints.save(m, paths[name], {"note": name})
    return paths, x


def test_canonicalize_saves_the_same_function(ckpts, tmp_path):
    paths, x = ckpts
    out = tmp_path / "a-canonical.safetensors"
    result = CliRunner().invoke(app, ["canonicalize", str(paths["a"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sites canonical" in result.output and "canonical" in result.output
    model, meta = checkpoints.load(out)
    original, _ = checkpoints.load(paths["a"])
    assert meta["canonical"]["not_canonical"] == []
    ref = _run(original, x)
    assert float((_run(model, x) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_fingerprint_groups_the_orbit(ckpts):
    paths, _ = ckpts
    args = ["fingerprint", str(paths["a"]), str(paths["a_moved"]), str(paths["b"]), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    fp = {r["checkpoint"]: r["fingerprint"] for r in data["models"]}
    assert fp[str(paths["a"])] == fp[str(paths["a_moved"])] != fp[str(paths["b"])]
    assert data["duplicates"] == [[str(paths["a"]), str(paths["a_moved"])]]
    table = CliRunner().invoke(app, ["fingerprint", str(paths["a"]), str(paths["a_moved"])])
    assert "same orbit" in table.output


def test_permutation_spec(ckpts, tmp_path):
    paths, _ = ckpts
    result = CliRunner().invoke(app, ["permutation-spec", str(paths["a"])])
    assert result.exit_code == 0, result.output
    ps = json.loads(result.output)
    assert set(ps) == {"perm_to_axes", "axes_to_perm", "skipped"}
    out = tmp_path / "ps.json"
    result = CliRunner().invoke(app, ["permutation-spec", str(paths["a"]), "--out", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text()) == ps


@pytest.mark.parametrize(
    "args",
    [
        ["canonicalize", "missing.safetensors", "--out", "x.safetensors"],
        ["canonicalize", "{a}", "--out", "x.pt"],
        ["fingerprint", "{a}", "missing.safetensors"],
        ["permutation-spec", "missing.safetensors"],
    ],
)
def test_bad_input_is_one_line(ckpts, tmp_path, args):
    paths, _ = ckpts
    args = [a.format(a=paths["a"]) for a in args]
    args = [str(tmp_path / a) if a.startswith(("missing", "x.")) else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_symmetries_json_carries_the_schema(ckpts):
    paths, _ = ckpts
    result = CliRunner().invoke(app, ["symmetries", str(paths["a"]), "--json", "--batch", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "intertwiner.symmetry-spec/1"
    assert all({"group", "actions"} <= set(s) for s in doc["sites"])
