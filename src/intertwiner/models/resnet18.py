"""ResNet-18, CIFAR variant: 3x3 stem (stride 1, no max-pool), blocks [2, 2, 2, 2], widths w..8w.

Module names: ``stem.conv, stem.bn, stem.act``; ``layer{1..4}.{0,1}.{conv1, bn1, act1, conv2, bn2,
act2, shortcut}`` where a shape-changing ``shortcut`` is option B, ``Sequential(conv, bn)`` (names
``shortcut.conv``, ``shortcut.bn``), else ``nn.Identity``; ``pool``, ``flatten``, ``head``.
Sites (17): ``stem.act``, ``layer1.0.act1``, ``layer1.0.act2``, ..., ``layer4.1.act2``.
With width 64: 11,173,962 parameters on 3x32x32 input and 10 classes. PyTorch default init.
"""

from __future__ import annotations

from typing import Any

from intertwiner.errors import ShapeError
from intertwiner.models._common import check_common, set_sites
from intertwiner.models._resnet import CifarResNet


class ResNet18(CifarResNet):
    """ResNet-18 for 32x32 (or 28x28) images."""

    def __init__(
        self,
        *,
        activation: Any = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 64,
    ):
        check_common(in_channels, input_size, num_classes)
        if int(width) < 1:
            raise ShapeError(f"width must be a positive int, got {width}")
        w = int(width)
        super().__init__(
            activation=activation,
            num_classes=num_classes,
            in_channels=in_channels,
            widths=[w, 2 * w, 4 * w, 8 * w],
            blocks=[2, 2, 2, 2],
            strides=[1, 2, 2, 2],
            shortcut="B",
        )
        set_sites(self, self._site_names)
