"""The ``intertwiner stitch`` command on two tiny checkpoints."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app


def _ckpt(tmp_path, seed):
    m = models.build("mlp", seed=seed, in_channels=1, input_size=8, widths=(12, 10)).eval()
    return str(checkpoints.save(m, tmp_path / f"m{seed}.safetensors", {"dataset": "digits"}))


def test_cli_stitch_prints_penalty(tmp_path):
    a, b = _ckpt(tmp_path, 0), _ckpt(tmp_path, 1)
    runner = CliRunner()
    out = runner.invoke(app, ["stitch", a, a, "--at", "act1", "--layer", "perm_scale",
                              "--epochs", "0", "-q"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "penalty        0.00 points" in out.output
    out = runner.invoke(app, ["stitch", a, b, "--at", "act2", "--layer", "low_rank:2",
                              "--epochs", "1", "-q", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)
    assert row["kind"] == "low_rank:2" and len(row["history"]) == 2
    bad = runner.invoke(app, ["stitch", a, b, "--at", "nope", "-q"])
    assert bad.exit_code == 2 and "not a module" in bad.output


def test_cli_stitch_defaults_and_init_samples(tmp_path):
    a, b = _ckpt(tmp_path, 0), _ckpt(tmp_path, 1)
    runner = CliRunner()
    out = runner.invoke(app, ["stitch", a, b, "--at", "act1", "--layer", "perm_scale",
                              "--init-samples", "256", "-q", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)
    assert (row["epochs"], row["lr"]) == (2, 1e-2)  # our recipe by default
    assert row["init_samples"] == 256
    bad = runner.invoke(app, ["stitch", a, b, "--at", "act1", "--init-samples", "many", "-q"])
    assert bad.exit_code == 2 and "--init-samples" in bad.output
