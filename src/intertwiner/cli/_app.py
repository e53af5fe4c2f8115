"""The typer app of the ``intertwiner`` command, and what every command shares: ``fail``, the
option checks, the log stream for non-terminals."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import typer

from intertwiner.errors import InvalidOptionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symmetries of neural networks: intertwiner groups, weight-space symmetries, "
    "representation metrics modulo symmetry, model stitching.",
)

_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_type(self, ctx):
    """A flag takes no value: show no ``<bool>`` placeholder in --help (typer shows one)."""
    return None if self.is_flag else _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type


def fail(error: Exception | str, code: int = 2) -> typer.Exit:
    """Print ``error`` as a one-line message on stderr and return the Exit to raise. The
    library's Python words for an option the command has become the option (``cli_words``)."""
    typer.echo(f"error: {cli_words(str(error))}", err=True)
    return typer.Exit(code)


# A keyword argument in a library message: ``upsample=True``, ``layers=[...]``, ``layers=``.
_KEYWORD = re.compile(r"\b([a-z][a-z0-9_]*)=(?:True\b|\[\.\.\.\]|(?=[\s;,.)]|$))")


def _current_context():
    """The running command's context (None outside a command). Typer >= 0.17 vendors its own
    click, whose context stack is not ``click``'s."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # older typer runs on click itself
        from click import get_current_context
    return get_current_context(silent=True)


def cli_words(text: str) -> str:
    """``text`` with each Python keyword (``upsample=True``, ``layers=[...]``) that names an option
    of the running command replaced by the option (``--upsample``, ``--layers``); keywords the
    command has no option for are left as they are."""
    ctx = _current_context()
    if ctx is None:
        return text
    opts = {o for p in ctx.command.params for o in p.opts if o.startswith("--")}

    def option(m: re.Match) -> str:
        opt = "--" + m.group(1).replace("_", "-")
        return opt if opt in opts else m.group(0)

    return _KEYWORD.sub(option, text)


# ---- option checks (typer callbacks: bad input exits with code 2 and one line, no traceback) ----
def _option_name(param: typer.CallbackParam) -> str:
    """The option as the user types it (``--eval-samples``), or the argument's name."""
    opts = [o for o in param.opts if o.startswith("--")]
    return opts[0] if opts else str(param.name).upper()  # the first spelling: --out, not --output


def _checked(check):
    """A typer callback running ``check(value, option_name)`` (an ``intertwiner._validate``
    check); its error becomes one line ``error: ...`` and exit code 2 (no usage box, no
    traceback)."""

    def callback(param: typer.CallbackParam, value):
        if value is None:
            return value
        name = _option_name(param)
        try:
            return check(value, name)
        except (ValueError, TypeError) as e:
            raise fail(e if name in str(e) else f"{name}: {e}") from None

    return callback


def count(minimum: int = 1):
    """A typer callback for a count option (samples, epochs, repeats, seeds with ``minimum=0``):
    ``_validate.positive_int`` under the option's name, so ``--eval-samples -10`` ends in
    ``error: --eval-samples must be at least 1, got -10`` (exit 2), the same words as the library's
    check of the same count."""

    def callback(param: typer.CallbackParam, value):
        from intertwiner._validate import positive_int

        if value is None:
            return value
        try:
            return positive_int(value, _option_name(param), minimum=minimum)
        except ValueError as e:
            raise fail(e) from None

    return callback


def _no_file_above(path: Path, value: str, name: str, consequence: str) -> None:
    """Refuse a path whose nearest existing parent is a file (``consequence``: why it matters)."""
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InvalidOptionError(
            f"{name} {value}: {above} is a file, so {consequence}; pick another path"
        )


def _folder(value: str, name: str) -> str:
    """A folder to write into, new or existing: not a file, and not under one."""
    from pathlib import Path

    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidOptionError(
            f"{value} is an existing file; {name} names a folder (new or existing)"
        )
    _no_file_above(path, value, name, "no folder can be made there")
    return value


def _output_file(value: str, name: str) -> str:
    """A file to write at the end of a command: its folder is made now (as ``--out`` folders
    are), so a long job never ends in a traceback that loses its results."""
    from pathlib import Path

    path = Path(value)
    if path.is_dir():
        raise InvalidOptionError(
            f"{value} is a folder; {name} names a file, e.g. {path / 'out.png'}"
        )
    _no_file_above(path, value, name, "nothing can be written under it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidOptionError(f"{name} {value}: cannot make its folder ({e.strerror})") from None
    return value


def _device(value: str, name: str) -> str:
    from intertwiner._validate import device

    return str(device(value, name))


def _fraction(value: float, name: str) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, name, low=0.0, high=1.0, high_open=True)


def _positive_number(value: float, name: str) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, name, low=0.0, low_open=True)


def _nonnegative_number(value: float, name: str) -> float:
    from intertwiner._validate import finite_number

    return finite_number(value, name, low=0.0)


def _seeds(value: str, name: str = "--seeds") -> str:
    from intertwiner.training import parse_seeds

    parse_seeds(value)
    return value


_FOLDER, _DEVICE, _FRACTION = _checked(_folder), _checked(_device), _checked(_fraction)
_FILE = _checked(_output_file)


def one_of(*options: str):
    """A typer callback: the value must be one of ``options`` (one line naming them, exit 2)."""

    def check(value: str, name: str) -> str:
        from intertwiner._validate import choice

        return choice(value, name, options)

    return _checked(check)


_POSITIVE, _NONNEGATIVE = _checked(_positive_number), _checked(_nonnegative_number)


class PlainLog:
    """A text stream for logs: progress bars' carriage returns become line breaks, terminal
    escape codes and the blank lines bars leave when they clear are dropped (stderr when it is
    not a terminal, e.g. a file or a CI log)."""

    _ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, stream) -> None:
        self.stream = stream
        self._at_line_start = True

    def write(self, text: str) -> int:
        clean = self._ESCAPE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
        out = []
        for k, line in enumerate(clean.split("\n")):
            if k > 0 and not self._at_line_start:
                out.append("\n")
                self._at_line_start = True
            line = line.rstrip() if k < clean.count("\n") else line
            if line.strip():
                out.append(line)
                self._at_line_start = False
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@app.callback()
def _main() -> None:
    """intertwiner: symmetries of deep learning models and their internal representations."""
    if not isinstance(sys.stderr, PlainLog) and not _isatty(sys.stderr):
        sys.stderr = PlainLog(sys.stderr)
        # one progress line every 10 s is plenty in a log
        os.environ.setdefault("TQDM_MININTERVAL", "10")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _write_json(path, obj) -> None:
    """Write ``obj`` as JSON atomically (``intertwiner._atomic``)."""
    from intertwiner import _atomic

    _atomic.write_text(path, json.dumps(obj, indent=2))


_ARCH_HELP = "mlp | myrtle_cnn | plain_cnn | resnet20 | resnet18 | vit"


def check_data_dir(dataset: str | None, data_dir: str | None) -> None:
    """``--data-dir`` only for datasets read from a folder (cifar10); elsewhere say so."""
    from intertwiner import data

    if data_dir is None or not dataset or data.takes_option(dataset, "root"):
        return
    if dataset not in data.DATASETS:
        return  # the unknown name is refused, listing the datasets, where it is loaded
    folders = ", ".join(d for d in data.DATASETS if data.takes_option(d, "root"))
    raise InvalidOptionError(
        f"--data-dir is for datasets read from a folder ({folders}); {dataset} needs none, "
        "leave --data-dir out"
    )


def _pair_splits(meta_a: dict, data: str | None, data_dir: str | None, checkpoint_a: str):
    from intertwiner import checkpoints

    check_data_dir(data or meta_a.get("dataset"), data_dir)
    return checkpoints.data_splits(meta_a, dataset=data, root=data_dir, source=checkpoint_a)


# ---- checkpoints of one's own modules (--model package.module:factory) --------------------------
MODEL_HELP = (
    "For weights checkpoints of your own nn.Module: package.module:factory (or file.py:factory), "
    "a function called with no arguments that returns the model to load the weights into."
)


def model_factory(spec: str):
    """The callable named by ``--model package.module:factory`` or ``path/file.py:factory``
    (the current folder is searched first, as ``python -m`` would)."""
    import importlib
    import importlib.util
    from pathlib import Path

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise InvalidOptionError(
            f"--model {spec!r}: write package.module:factory or file.py:factory, e.g. "
            "--model mynets:build_cnn"
        )
    try:
        if where.endswith(".py"):
            loader = importlib.util.spec_from_file_location(Path(where).stem, where)
            if loader is None or not Path(where).is_file():
                raise ImportError(f"no file {where}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except ImportError as e:
        raise InvalidOptionError(
            f"--model {spec!r}: cannot import {where} ({e}); run from the folder that holds it, "
            "install it, or name the file (path/to/nets.py:factory)"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InvalidOptionError(f"--model {spec!r}: {where} has no function {name!r}")
    return factory


def load_checkpoint(path: str, factory: str | None = None):
    """``checkpoints.load`` for the CLI: ``(model, metadata)``; a weights checkpoint of one's
    own module is loaded into the model ``--model`` builds (refused, saying so, without it)."""
    from pathlib import Path

    from torch import nn

    from intertwiner import checkpoints
    from intertwiner.errors import CheckpointError

    if not Path(path).is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path (a .safetensors file)")
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(
            f"{path} is not a checkpoint: pass a .safetensors file written by intertwiner train, "
            "zoo or reproduce (or checkpoints.save)"
        )
    model = None
    if factory is not None:
        try:
            model = model_factory(factory)()
        except TypeError as e:
            raise InvalidOptionError(
                f"--model {factory!r} could not be called with no arguments ({e})"
            ) from None
        if not isinstance(model, nn.Module):
            raise InvalidOptionError(
                f"--model {factory!r} returned a {type(model).__name__}, not an nn.Module"
            )
    elif checkpoints.read_metadata(path).get("kind") == "weights":
        cls = checkpoints.read_metadata(path).get("model_class") or "model of your own"
        raise CheckpointError(
            f"{path} holds the weights of a {cls}, which intertwiner cannot rebuild: pass "
            "--model package.module:factory (a function returning that model)"
        )
    return checkpoints.load(path, model=model)
