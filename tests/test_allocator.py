"""Huge pages for torch's large CPU tensors (intertwiner._allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from intertwiner import _allocator

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or None."""
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


def _active_in_fresh_process(setting: str | None, allocate_first: bool) -> bool:
    env = {k: v for k, v in os.environ.items() if k != _allocator.VARIABLE}
    if setting is not None:
        env[_allocator.VARIABLE] = setting
    first = "import torch; torch.ones(1024, 1024); " if allocate_first else ""
    code = first + "import intertwiner._allocator as a; print(a.active())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_request_keeps_the_users_setting(monkeypatch):
    monkeypatch.setenv(_allocator.VARIABLE, "0")
    _allocator.request()
    assert os.environ[_allocator.VARIABLE] == "0"
    monkeypatch.delenv(_allocator.VARIABLE)
    _allocator.request()
    assert os.environ[_allocator.VARIABLE] == "1"


@pytest.mark.skipif(_thp_mode() != "madvise", reason="needs transparent huge pages in madvise mode")
def test_importing_intertwiner_first_gives_huge_pages_and_the_user_can_say_no():
    assert _active_in_fresh_process(None, allocate_first=False)
    # The user's "0" wins; torch reads the setting once, at its first allocation.
    assert not _active_in_fresh_process("0", allocate_first=False)
    assert not _active_in_fresh_process(None, allocate_first=True)


def test_active_is_a_bool():
    assert isinstance(_allocator.active(), bool)
