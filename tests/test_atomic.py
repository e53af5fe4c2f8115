"""The atomic writer: whole files or none, and modes that follow the umask (issue 27)."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import pytest
import torch

from intertwiner import _atomic, checkpoints


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_written_files_follow_the_umask_like_open_does(tmp_path, mask):
    """0644 under the usual umask 022 (a colleague can read the report), not tempfile's 0600."""
    with umask(mask):
        plain = tmp_path / "plain.txt"
        plain.write_text("by open()")
        _atomic.write_text(tmp_path / "report.html", "<html></html>")
        _atomic.write_bytes(tmp_path / "old.bin", b"v1")
        os.chmod(tmp_path / "old.bin", 0o600)
        _atomic.write_bytes(tmp_path / "old.bin", b"v2")  # replacing: a new file, the umask's mode
    want = 0o666 & ~mask
    assert _mode(plain) == want
    assert _mode(tmp_path / "report.html") == want
    assert _mode(tmp_path / "old.bin") == want
    assert (tmp_path / "old.bin").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.bin", "plain.txt", "report.html"]


def test_checkpoints_and_sidecars_are_readable_by_others_under_umask_022(tmp_path):
    with umask(0o022):
        path = checkpoints.save(torch.nn.Linear(3, 2), tmp_path / "m.safetensors", {"seed": 0})
    assert _mode(path) == _mode(checkpoints.sidecar(path)) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    _atomic.write_text(target, "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic.atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_temporaries_are_named_so_that_leftovers_are_recognised(tmp_path, monkeypatch):
    seen = []
    real = _atomic._create_temporary

    def spy(path):
        fd, tmp = real(path)
        seen.append(tmp)
        return fd, tmp

    monkeypatch.setattr(_atomic, "_create_temporary", spy)
    _atomic.write_text(tmp_path / "m.json", "{}")
    assert len(seen) == 1 and _atomic.is_temporary(seen[0])
    assert seen[0].name.startswith(".m.json.") and seen[0].parent == tmp_path
