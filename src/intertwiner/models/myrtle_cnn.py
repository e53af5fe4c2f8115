"""The paper's mCNN: the Myrtle "basic net" (four conv blocks, channels w, 2w, 4w, 8w).

Module names, in forward order (``batchnorm=False`` drops every ``.bn`` and gives convs a bias)::

    block1.conv, block1.bn, block1.act                  Conv3x3(C -> w)
    block2.conv, block2.bn, block2.act, block2.pool     Conv3x3(w -> 2w), MaxPool2d(2)
    block3.conv, block3.bn, block3.act, block3.pool     Conv3x3(2w -> 4w), MaxPool2d(2)
    block4.conv, block4.bn, block4.act, block4.pool     Conv3x3(4w -> 8w), MaxPool2d(2)
    pool                                                MaxPool2d(k) over the whole remaining map
    flatten, head                                       Linear(8w -> num_classes)

Activation sites: ``block1.act`` ... ``block4.act`` (layout ``(N, C, H, W)``; channels are neurons).
The final pool's kernel is the remaining spatial size (4 for 32x32 input as in the paper, 3 for
28x28), so any input size works. PyTorch default initialisation, as in the reference code.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.models._common import (
    check_common,
    new_activation,
    set_sites,
    spatial_after_pools,
)


def _block(c_in: int, c_out: int, activation: Any, batchnorm: bool, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)
    if batchnorm:
        layers["bn"] = nn.BatchNorm2d(c_out)
    layers["act"] = new_activation(activation)
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class MyrtleCNN(nn.Module):
    """The mCNN (``batchnorm=True``: mCNN_bn_k; ``batchnorm=False``: mCNN_k of the sanity test)."""

    def __init__(
        self,
        *,
        activation: Any = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 64,
        batchnorm: bool = True,
    ):
        super().__init__()
        check_common(in_channels, input_size, num_classes)
        if int(width) < 1:
            raise ShapeError(f"width must be a positive int, got {width}")
        w = int(width)
        self.block1 = _block(in_channels, w, activation, batchnorm, pool=False)
        self.block2 = _block(w, 2 * w, activation, batchnorm, pool=True)
        self.block3 = _block(2 * w, 4 * w, activation, batchnorm, pool=True)
        self.block4 = _block(4 * w, 8 * w, activation, batchnorm, pool=True)
        self.pool = nn.MaxPool2d(spatial_after_pools(int(input_size), 3))
        self.flatten = nn.Flatten()
        self.head = nn.Linear(8 * w, num_classes)
        set_sites(self, [f"block{i}.act" for i in range(1, 5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) -> logits (N, num_classes)."""
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.flatten(self.pool(x)))
