"""The README's Python blocks run as written, and its test command is the one CI runs.

A block preceded by ``<!-- readme-test: slow ... -->`` is marked ``slow`` (it trains a model or
traces a transformer). The stitching block reads two checkpoints; they are made here by the
README's own ``intertwiner train`` commands, with one epoch instead of twelve.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- readme-test: (?P<tag>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks() -> list:
    out = []
    for m in FENCE.finditer(README):
        tag = m.group("tag") or ""
        line = README[: m.start("code")].count("\n") + 1
        marks = [pytest.mark.slow] if tag.startswith("slow") else []
        out.append(pytest.param(m.group("code"), id=f"line{line}", marks=marks))
    return out


def _train_commands() -> list[list[str]]:
    cmds = []
    for line in README.splitlines():
        if line.startswith("intertwiner train --arch myrtle_cnn --activation relu --data mnist"):
            args = shlex.split(line)[1:]
            args[args.index("--epochs") + 1] = "1"
            cmds.append([*args, "-q"])
    return cmds


def test_readme_has_python_blocks_and_the_seed_1_model_is_trained_by_a_shown_command():
    assert len(blocks()) >= 5
    cmds = _train_commands()
    seeds = {c[c.index("--seed") + 1] if "--seed" in c else "0" for c in cmds}
    assert seeds == {"0", "1"}


@pytest.mark.parametrize("code", blocks())
def test_readme_python_block_runs_as_written(code, tmp_path, monkeypatch):
    if "transformers" in code:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    if "zoo/myrtle_cnn-relu-mnist-seed1" in code:
        from typer.testing import CliRunner

        from intertwiner.cli import app

        for args in _train_commands():
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)


def test_readme_test_command_is_the_one_ci_runs():
    shown = re.search(r"```bash\n(\. \.venv/bin/activate && pip install[^\n]*)\n```", README)
    assert shown, "the README shows the test command in a bash block"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shown.group(1) in ci
