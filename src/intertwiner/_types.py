"""Named type aliases for what the public functions accept (bottom layer: imports nothing of ours).

``FeatureLike``: features of one layer, ``(N, C)`` dense, ``(N, C, H, W)`` conv or ``(N, T, D)``
tokens, as a tensor or numpy array. ``DataLike``: model inputs, as a tensor, a Dataset of
``(x, y)`` items or any iterable of batches (a DataLoader). ``ExampleInput``: one batch a model
is called with (a tensor, or a tuple of its positional arguments). ``JSONDict``: a
JSON-serialisable mapping (metadata, result rows). ``DeviceLike``: a torch device or its name.
``Indices``: item indices into a dataset. ``SiteName``: a site or capture name, ``name#k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DataLike",
    "DeviceLike",
    "ExampleInput",
    "FeatureLike",
    "Indices",
    "JSONDict",
    "SiteName",
]

FeatureLike: TypeAlias = torch.Tensor | np.ndarray
DataLike: TypeAlias = torch.Tensor | np.ndarray | Dataset | DataLoader | Iterable[Any]
ExampleInput: TypeAlias = torch.Tensor | tuple[Any, ...]
JSONDict: TypeAlias = dict[str, Any]
Indices: TypeAlias = torch.Tensor | Sequence[int]
DeviceLike: TypeAlias = str | torch.device | None


@dataclass(frozen=True)
class SiteName:
    """A site name as ``symmetry.trace``, ``features.capture`` and stitching write it: ``base``
    (a module path or a graph node name) and, for a module called several times in one forward,
    which call (``"relu#2"``: the second call of ``relu``). ``call`` is None when the name gives
    no ``#k`` (the module's only or first call)."""

    base: str
    call: int | None = None

    @classmethod
    def parse(cls, text: str) -> SiteName:
        """``"a.relu#2"`` -> ``SiteName("a.relu", 2)``; anything else (no ``#``, or ``#`` not
        followed by a call number >= 1) is a base of its own."""
        base, sep, call = text.rpartition("#")
        if sep and base and call.isdigit() and int(call) >= 1:
            return cls(base, int(call))
        return cls(text)

    @property
    def k(self) -> int:
        """The call, 1 when none is named."""
        return self.call or 1

    def __str__(self) -> str:
        """``base`` for the first call (or none named), else ``base#k``."""
        return self.base if self.k == 1 else f"{self.base}#{self.k}"
