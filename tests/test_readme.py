"""The README's Python blocks run as written, and its test command is the one CI runs.

A block preceded by ``<!-- readme-test: slow ... -->`` is marked ``slow`` (it trains a model or
traces a transformer). The stitching block reads two checkpoints; they are made here by the
README's own ``intertwiner train`` commands, with one epoch instead of twelve.

Shown output is compared with what the block prints: a ``print(...)`` line whose comment reads
``# -> EXPECTED  (prose)`` must print EXPECTED (up to the first double space), and a plain
fenced block right after a Python block must equal everything the block printed, line by line
(a line ``...`` stands for any number of lines; a block that starts with ``$ `` is a shell
session, not the block's output). See ``output_matches`` for how numbers and
``...`` inside a line compare.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<tag>[^>]*?) -->\n)?```python\n(?P<code>.*?)```\n"
    r"(?:\n```\n(?P<shown>.*?)```\n)?",
    re.S,
)
# A number as printed: 3, -0.5, 1., 9.4e-08, 0.0726 (a trailing "..." is handled by the pattern).
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
ARROW = re.compile(r"^print\(.*#\s*->\s*(?P<expected>.*?)(?:\s{2,}.*)?$")


def blocks() -> list:
    out = []
    for m in FENCE.finditer(README):
        tag = m.group("tag") or ""
        line = README[: m.start("code")].count("\n") + 1
        marks = [pytest.mark.slow] if tag.startswith("slow") else []
        shown = m.group("shown")
        if shown is not None and shown.startswith("$ "):
            shown = None  # a shell session shown beside the block, not what the block prints
        out.append(pytest.param(m.group("code"), shown, id=f"line{line}", marks=marks))
    return out


def _normalised(text: str) -> str:
    """Whitespace runs as one space, none inside brackets' edges (numpy pads its columns); a
    table's rule of dashes as three (its width follows the contents)."""
    text = re.sub(r"-{3,}", "---", re.sub(r"\s+", " ", text.strip()))
    return re.sub(r"([\[(]) | ([\])])", r"\1\2", text)


def _close(shown: str, got: float) -> bool:
    """Whether ``got`` agrees with a number as the README shows it: to one unit in its last
    shown digit; a number shown at full precision (over 6 significant digits) is a round-off
    report (an error estimate), which moves with the platform's arithmetic: it agrees within a
    factor of 10 (and in sign)."""
    mantissa, _, exponent = shown.lower().lstrip("+-").partition("e")
    value = float(shown)
    if len(mantissa.replace(".", "").lstrip("0")) > 6:
        return value == got or (value * got > 0 and 0.1 <= got / value <= 10.0)
    unit = 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
    return abs(got - value) <= unit * 1.000001


def output_matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` shows ``expected``: whitespace normalised, ``...`` matches any text,
    numbers agree to the digits the README shows, everything else exactly."""
    expected, printed = _normalised(expected), _normalised(printed)
    parts = re.split(rf"(\.\.\.|(?<![\w.]){NUMBER}(?![\w]))", expected)
    pattern, numbers = "", []
    for k, part in enumerate(parts):
        if k % 2 == 0:
            pattern += re.escape(part)
        elif part == "...":
            pattern += ".*?"
        else:
            pattern += f"({NUMBER})"
            numbers.append(part)
    m = re.fullmatch(pattern, printed, re.S)
    if m is None:
        return False
    return all(_close(shown, float(got)) for shown, got in zip(numbers, m.groups(), strict=True))


def _lines_match(shown: list[str], printed: list[str]) -> bool:
    """Line-by-line ``output_matches``; a line ``...`` matches any number of lines."""
    if not shown:
        return not printed
    if shown[0].strip() == "...":
        return any(_lines_match(shown[1:], printed[k:]) for k in range(len(printed) + 1))
    return (
        bool(printed)
        and output_matches(shown[0], printed[0])
        and _lines_match(shown[1:], printed[1:])
    )


class _Printed:
    """A ``print`` for a README block that records what each source line printed."""

    def __init__(self) -> None:
        self.by_line: dict[int, list[str]] = {}
        self.lines: list[str] = []

    def __call__(self, *args, sep: str = " ", end: str = "\n", **kwargs) -> None:
        text = sep.join(str(a) for a in args)
        print(*args, sep=sep, end=end, **kwargs)  # still shown with pytest -s
        self.by_line.setdefault(sys._getframe(1).f_lineno, []).append(text)
        self.lines.extend(text.splitlines())


def test_output_matches_its_rules():
    assert output_matches("0.515", "0.5151234")
    assert not output_matches("0.515", "0.517")
    assert output_matches("0.0726...", "0.07264217")
    assert output_matches("True True True", "True  True\nTrue")
    assert not output_matches("True True True", "True False True")
    assert output_matches("[[1. 0.644] [0.644 1.]]", "[[1.    0.644]\n [0.644 1.   ]]")
    assert output_matches("tensor([0, 1, 3], ...)", "tensor([0, 1, 3], dtype=torch.int64)")
    assert output_matches("1.4063930358078644e-07", "1.6999321901470468e-07")
    assert not output_matches("1.4063930358078644e-07", "2.0e-09")
    assert output_matches("name  kind\n----  ------", "name    kind\n------  ------")
    assert _lines_match(["a 1", "...", "b 2"], ["a 1", "x", "y", "b 2"])
    assert not _lines_match(["a 1", "...", "b 2"], ["a 1", "x"])


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


def test_readme_shows_checked_output():
    arrows = [line for line in README.splitlines() if ARROW.match(line)]
    assert len(arrows) >= 10, "print lines with '# -> output' comments"
    assert sum(shown is not None for _, shown in (p.values for p in blocks())) >= 1


@pytest.mark.parametrize(("code", "shown"), blocks())
def test_readme_python_block_runs_as_written(code, shown, tmp_path, monkeypatch):
    if "transformers" in code:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    if "zoo/myrtle_cnn-relu-mnist-seed1" in code:
        from typer.testing import CliRunner

        from intertwiner.cli import app

        for args in _train_commands():
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
    printed = _Printed()
    namespace: dict = {"__name__": "readme", "print": printed}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    for number, line in enumerate(code.splitlines(), start=1):
        arrow = ARROW.match(line)
        if arrow:
            got = "\n".join(printed.by_line.get(number, []))
            assert output_matches(arrow["expected"], got), (
                f"README shows {arrow['expected']!r} for {line.split('#')[0].strip()!r}; "
                f"it printed {got!r}"
            )
    if shown is not None:
        assert _lines_match(shown.strip("\n").splitlines(), printed.lines), (
            f"the README's output block:\n{shown}\nwhat the block printed:\n"
            + "\n".join(printed.lines)
        )


def test_readme_test_command_is_the_one_ci_runs():
    shown = re.search(r"```bash\n(\. \.venv/bin/activate && pip install[^\n]*)\n```", README)
    assert shown, "the README shows the test command in a bash block"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shown.group(1) in ci
