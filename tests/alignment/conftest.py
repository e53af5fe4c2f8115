"""Tiny zoo models (the symmetry tests' configs) and one intra-op thread."""

from __future__ import annotations

import pytest
import torch
from tests.symmetry.conftest import ZOO, build_zoo

__all__ = ["ZOO", "build_zoo"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
