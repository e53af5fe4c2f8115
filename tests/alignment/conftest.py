"""Tiny zoo models (the symmetry tests' configs) and one intra-op thread."""

from __future__ import annotations

from tests.symmetry.conftest import ZOO, _one_thread, build_zoo

__all__ = ["ZOO", "_one_thread", "build_zoo"]  # _one_thread: the autouse fixture, shared
