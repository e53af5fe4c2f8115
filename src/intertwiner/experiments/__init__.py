"""Experiments: each stage is config -> list of jobs -> result rows; ``reproduce`` runs them all."""

from intertwiner.experiments.base import Stage


def reproduce(*args, **kwargs):
    """See :func:`intertwiner.experiments.pipeline.reproduce` (imported lazily)."""
    from intertwiner.experiments.pipeline import reproduce as _reproduce

    return _reproduce(*args, **kwargs)


__all__ = ["Stage", "reproduce"]
