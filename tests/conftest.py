"""Fixtures shared by every test folder: one intra-op thread, digits splits, tiny trained MLPs.

Model and data builders live in ``tests/_support/factories.py``; a folder's conftest switches the
one-thread fixture on for all its tests with a two-line autouse wrapper.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tests._support.factories import TinyMLP, TinyResMLP, digits_splits, train_quick

from intertwiner.testing import import_torchvision

# The [zoo] extra's torchvision wheel is built for a CUDA torch; transformers and timm import it,
# and the import fails on the CPU torch unless its operator schemas exist: define them first.
if importlib.util.find_spec("torchvision") is not None:
    import_torchvision()


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _thread_count_is_left_as_found():
    """A test (or a fixture it set up) that changes the torch thread count for good changes every
    later result that depends on it; fail it where it happens, not in some later test."""
    yield
    leaked = torch.get_num_threads()
    if leaked != _SESSION_THREADS:
        torch.set_num_threads(_SESSION_THREADS)
        pytest.fail(f"torch thread count left at {leaked} (was {_SESSION_THREADS}); restore it")


@pytest.fixture(scope="session")
def digits():
    return digits_splits()


@pytest.fixture(scope="session")
def digits64():
    return digits_splits(torch.float64)


@pytest.fixture(scope="session")
def mlp(digits):
    return train_quick(TinyMLP(), digits)


@pytest.fixture(scope="session")
def mlp64(digits64):
    return train_quick(TinyMLP(dtype=torch.float64), digits64)


@pytest.fixture(scope="session")
def resmlp64(digits64):
    return train_quick(TinyResMLP(dtype=torch.float64), digits64)
