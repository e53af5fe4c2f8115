import json

from typer.testing import CliRunner

from intertwiner.cli import app
from intertwiner.groups import TABLE_ROWS

runner = CliRunner()


def test_groups_json_covers_the_table_and_agrees():
    result = runner.invoke(app, ["groups", "--json", "--trials", "4"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # the progress bar goes to stderr
    assert [r["activation"] for r in rows] == TABLE_ROWS
    assert "groups" in result.stderr and "\r" not in result.stderr  # progress, as log lines
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


def test_help_shows_no_bool_placeholder_and_says_what_width_is():
    for cmd in ("groups", "train", "reproduce"):
        res = runner.invoke(app, [cmd, "--help"], terminal_width=120)
        assert res.exit_code == 0 and "<bool>" not in res.output, res.output
    train = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert "Width multiplier" not in train and "Channels" in train
    assert "test" in runner.invoke(app, ["reproduce", "--help"], terminal_width=200).output


def test_logs_hold_no_terminal_escape_codes():
    from intertwiner.cli import PlainLog

    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, t):
            self.text += t

        def flush(self):
            pass

    sink = Sink()
    log = PlainLog(sink)
    for chunk in ("\rbar  10%", "\rbar  50%\x1b[A", "\r" + " " * 20 + "\r", "error: x\n"):
        log.write(chunk)
    assert sink.text == "bar  10%\nbar  50%\nerror: x\n"
