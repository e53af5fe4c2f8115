"""Every stitching test runs on one thread; fixtures: tests/conftest.py."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this folder runs on one intra-op thread (tiny tensors)."""
