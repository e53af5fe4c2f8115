"""A plain (no skip connection) CNN of ``depth`` 3x3 conv layers: Kornblith et al.'s (2019) setting
for layer identification, where every layer is a hidden site of the same kind.

Module names, in forward order (``batchnorm=False`` drops every ``.bn`` and gives convs a bias)::

    block1.conv, block1.bn, block1.act        Conv3x3(C -> width), stride 2 if 1 in ``strided``
    block2.conv, block2.bn, block2.act        Conv3x3(width -> width), stride 2 if 2 in ``strided``
    ...
    blockD.conv, blockD.bn, blockD.act
    pool, flatten, head                       global average pool, Linear(width -> num_classes)

Activation sites: ``block1.act`` ... ``blockD.act`` (layout ``(N, width, H, W)``; channels are the
neurons). The default (depth 10, stride 2 at layers 1 and 6) gives two halves of five layers whose
spatial sizes differ by a factor of 2 (14x14 and 7x7 for 28x28 input), so position-wise measures
compare them with ``upsample=True``. Constant width keeps every layer the same kind of object.
PyTorch default initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.models._common import check_common, new_activation, set_sites


class PlainCNN(nn.Module):
    """[Conv3x3 -> BatchNorm -> activation] * depth -> global average pool -> Linear head."""

    def __init__(
        self,
        *,
        activation: Any = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 16,
        depth: int = 10,
        strided: Sequence[int] = (1, 6),
        batchnorm: bool = True,
    ):
        super().__init__()
        check_common(in_channels, input_size, num_classes)
        if int(width) < 1 or int(depth) < 1:
            raise ShapeError(f"width and depth must be positive ints, got {width} and {depth}")
        depth, strided = int(depth), sorted({int(s) for s in strided})
        if any(not 1 <= s <= depth for s in strided):
            raise ShapeError(f"strided layers {strided} must lie in 1..{depth}")
        size = int(input_size)
        for _ in strided:  # a 3x3 conv with padding 1 and stride 2 maps s to ceil(s / 2)
            size = (size + 1) // 2
        if size < 1:  # pragma: no cover (ceil never reaches 0 from a positive size)
            raise ShapeError(f"input_size {input_size} too small for {len(strided)} strides")
        c = in_channels
        for i in range(1, depth + 1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers["conv"] = nn.Conv2d(
                c, int(width), 3, stride=2 if i in strided else 1, padding=1, bias=not batchnorm
            )
            if batchnorm:
                layers["bn"] = nn.BatchNorm2d(int(width))
            layers["act"] = new_activation(activation)
            self.add_module(f"block{i}", nn.Sequential(layers))
            c = int(width)
        self.depth = depth
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(int(width), num_classes)
        set_sites(self, [f"block{i}.act" for i in range(1, depth + 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) -> logits (N, num_classes)."""
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x)
        return self.head(self.flatten(self.pool(x)))
