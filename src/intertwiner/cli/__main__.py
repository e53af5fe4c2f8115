"""``python -m intertwiner.cli``: the same command as ``intertwiner``."""

from intertwiner.cli import app

app()
