"""Named type aliases for what the public functions accept (bottom layer: imports nothing of ours).

``FeatureLike``: features of one layer, ``(N, C)`` dense, ``(N, C, H, W)`` conv or ``(N, T, D)``
tokens, as a tensor or numpy array. ``DataLike``: model inputs, as a tensor, a Dataset of
``(x, y)`` items or any iterable of batches (a DataLoader). ``ExampleInput``: one batch a model
is called with (a tensor, or a tuple of its positional arguments). ``JSONDict``: a
JSON-serialisable mapping (metadata, result rows). ``DeviceLike``: a torch device or its name.
``Indices``: item indices into a dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["DataLike", "DeviceLike", "ExampleInput", "FeatureLike", "Indices", "JSONDict"]

FeatureLike: TypeAlias = torch.Tensor | np.ndarray
DataLike: TypeAlias = torch.Tensor | np.ndarray | Dataset | DataLoader | Iterable[Any]
ExampleInput: TypeAlias = torch.Tensor | tuple[Any, ...]
JSONDict: TypeAlias = dict[str, Any]
Indices: TypeAlias = torch.Tensor | Sequence[int]
DeviceLike: TypeAlias = str | torch.device | None
