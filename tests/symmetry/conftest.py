"""Every symmetry test runs on one thread; the tiny zoo: tests/_support/factories.py."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this folder runs on one intra-op thread (tiny tensors)."""
