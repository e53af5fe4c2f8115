"""The CIFAR BasicBlock and the two shortcut kinds shared by ResNet-20 and ResNet-18.

Block module names: ``conv1, bn1, act1, conv2, bn2, act2, shortcut``. The forward is
``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``: ``act1`` is the hidden site inside the
residual branch, ``act2`` the block output after the residual add.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.models._common import new_activation


class OptionAShortcut(nn.Module):
    """He et al.'s option A: subsample by ``stride`` and zero-pad channels (no parameters).

    ``(N, C_in, H, W) -> (N, C_in + pad_before + pad_after, H/stride, W/stride)``; the input's
    channels land at indices ``pad_before .. pad_before + C_in - 1``.
    """

    def __init__(self, stride: int, pad_before: int, pad_after: int):
        super().__init__()
        self.stride = int(stride)
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def option_a(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else option A (padding split evenly: planes//4 per side)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    extra = c_out - c_in
    return OptionAShortcut(stride, extra // 2, extra - extra // 2)


def option_b(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else ``Sequential(conv=1x1/stride, bn=BatchNorm2d)``."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
            bn=nn.BatchNorm2d(c_out),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; the residual add happens before ``act2`` inside this forward."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: Any, shortcut: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = new_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = new_activation(activation)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3-BN-act, stages of BasicBlocks, global average pool, Linear head.

    Names: ``stem.conv, stem.bn, stem.act, layer{s}.{b}.<block names>, pool, flatten, head``.
    Sites: ``stem.act`` then ``layer{s}.{b}.act1``, ``layer{s}.{b}.act2`` for every block in order.
    """

    def __init__(
        self,
        *,
        activation: Any,
        num_classes: int,
        in_channels: int,
        widths: list[int],
        blocks: list[int],
        strides: list[int],
        shortcut: str,
    ):
        super().__init__()
        make_shortcut = option_a if shortcut == "A" else option_b
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[0]),
                act=new_activation(activation),
            )
        )
        sites = ["stem.act"]
        c_in = widths[0]
        for s, (w, n, stride) in enumerate(zip(widths, blocks, strides, strict=True), start=1):
            stage = []
            for b in range(n):
                st = stride if b == 0 else 1
                stage.append(BasicBlock(c_in, w, st, activation, make_shortcut(c_in, w, st)))
                sites += [f"layer{s}.{b}.act1", f"layer{s}.{b}.act2"]
                c_in = w
            self.add_module(f"layer{s}", nn.Sequential(*stage))
        self.n_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, num_classes)
        self._site_names = sites

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) -> logits (N, num_classes)."""
        x = self.stem(x)
        for s in range(1, self.n_stages + 1):  # fixed at construction: fx unrolls it
            x = getattr(self, f"layer{s}")(x)
        return self.head(self.flatten(self.pool(x)))
