"""The ``intertwiner`` command line (typer).

Each command is a thin wrapper: parse options, call the library, print a table or JSON. Heavy
imports happen inside the commands so that ``intertwiner --help`` is fast. One module per group of
commands; importing them registers the commands on ``app``.
"""

from intertwiner.cli._app import PlainLog, app, fail

# Importing a module registers its commands; the import order is the order of --help.
# isort: off
from intertwiner.cli import _train  # noqa: F401, E402
from intertwiner.cli import _run  # noqa: F401, E402
from intertwiner.cli import _experiments  # noqa: F401, E402
from intertwiner.cli import _align  # noqa: F401, E402
from intertwiner.cli import _merge  # noqa: F401, E402
from intertwiner.cli import _compare  # noqa: F401, E402
from intertwiner.cli import _measures  # noqa: F401, E402
from intertwiner.cli import _weightspace  # noqa: F401, E402
# isort: on

__all__ = ["PlainLog", "app", "fail"]
