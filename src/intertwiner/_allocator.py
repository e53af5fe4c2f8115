"""Huge pages for torch's large CPU tensors: asked for once, when intertwiner is imported.

A metric's temporaries (float64 copies, centred features, Gram matrices) are tens to hundreds of
MiB. torch's CPU allocator takes them from the kernel in 4 KiB pages and faults each one in on
first touch; on Linux with transparent huge pages in "madvise" mode (most distributions' default)
the faults alone made centring a 2,000 x 4,096 float64 matrix 3-8x slower than the subtraction
itself. torch advises 2 MiB pages for allocations of 2 MiB and more when the environment variable
``THP_MEM_ALLOC_ENABLE=1`` is set before its first allocation; numpy does so by default.

``request()`` sets that variable unless the user set it (to anything, "0" included); it takes
effect when intertwiner is imported before the process allocates its first tensor (the command
line, scripts that import intertwiner near their top). Values never change: only where memory
comes from. ``active()`` says whether it took effect here.
"""

from __future__ import annotations

import os

VARIABLE = "THP_MEM_ALLOC_ENABLE"
_HUGE = 2 << 20  # 2 MiB: torch's huge-page alignment and threshold


def request() -> None:
    """Ask torch's allocator for huge pages, unless the environment already says either way."""
    os.environ.setdefault(VARIABLE, "1")


def active() -> bool:
    """Whether a large torch CPU tensor lands on huge pages in this process: one 4 MiB tensor is
    touched and its mapping's ``AnonHugePages`` read from ``/proc/self/smaps`` (False where that
    file does not exist)."""
    import torch

    probe = torch.zeros(2 * _HUGE, dtype=torch.uint8)
    address = probe.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= address < hi
                elif inside and head == "AnonHugePages:":
                    return int(line.split()[1]) > 0
    except OSError:
        return False
    return False


__all__ = ["VARIABLE", "active", "request"]
