import json

from typer.testing import CliRunner

from intertwiner.cli import app
from intertwiner.groups import TABLE_ROWS

runner = CliRunner()


def test_groups_json_covers_the_table_and_agrees():
    result = runner.invoke(app, ["groups", "--json", "--trials", "4"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["activation"] for r in rows] == TABLE_ROWS
    for r in rows:
        assert r["discover_agrees"], r
        assert r["verify_error_float64"] < 1e-12
        assert r["larger_family_error"] is None or r["larger_family_error"] > 1e-3


def test_groups_one_row_table():
    result = runner.invoke(app, ["groups", "--activation", "relu"])
    assert result.exit_code == 0, result.output
    assert "G_ReLU" in result.output and "P D, D > 0" in result.output
    assert "tanh" not in result.output


def test_groups_unknown_activation_is_a_clean_error():
    result = runner.invoke(app, ["groups", "--activation", "nope"])
    assert result.exit_code == 2
    assert "discover" in result.output
