"""A fully connected network on flattened images (or tabular rows: ``in_features=D``).

Module names (``named_modules()``), in forward order::

    flatten            nn.Flatten: (N, C, H, W) -> (N, C*H*W)
    fc1, act1          nn.Linear(C*H*W -> widths[0]), activation
    fc2, act2          nn.Linear(widths[0] -> widths[1]), activation
    ...
    head               nn.Linear(widths[-1] -> num_classes)

Activation sites: ``act1``, ``act2``, ... (layout ``(N, width)``). PyTorch default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.models._common import check_common, new_activation, set_sites


class MLP(nn.Module):
    """Flatten -> [Linear -> activation] * len(widths) -> Linear head."""

    def __init__(
        self,
        *,
        activation: Any = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        widths: Sequence[int] = (256, 128),
        in_features: int | None = None,
    ):
        super().__init__()
        check_common(in_channels, input_size, num_classes)
        if in_features is not None and int(in_features) < 1:
            raise ShapeError(f"in_features must be a positive integer, got {in_features}")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ShapeError(f"widths must be a non-empty list of positive ints, got {widths}")
        self.flatten = nn.Flatten()
        # in_features: tabular rows (N, D); otherwise images (N, C, H, W) flattened
        fan_in = int(in_features) if in_features else in_channels * input_size * input_size
        for i, w in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(fan_in, w))
            self.add_module(f"act{i}", new_activation(activation))
            fan_in = w
        self.head = nn.Linear(fan_in, num_classes)
        self.depth = len(widths)
        set_sites(self, [f"act{i}" for i in range(1, self.depth + 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) or (N, C*H*W) -> logits (N, num_classes)."""
        x = self.flatten(x)
        # ``depth`` is a Python int fixed at construction, so torch.fx unrolls this loop.
        for i in range(1, self.depth + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(x))
        return self.head(x)
