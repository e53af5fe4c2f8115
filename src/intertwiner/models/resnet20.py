"""ResNet-20 for CIFAR (He et al. 2016): 3 stages x 3 BasicBlocks, widths w, 2w, 4w, option A.

Module names: ``stem.conv, stem.bn, stem.act``; ``layer{1,2,3}.{0,1,2}.{conv1, bn1, act1, conv2,
bn2, act2, shortcut}``; ``pool`` (AdaptiveAvgPool2d(1)), ``flatten``, ``head``
(Linear(4w -> classes)).
Sites (19 with the default depth): ``stem.act``, ``layer1.0.act1`` (inside the residual branch),
``layer1.0.act2`` (block output, after the residual add), ..., ``layer3.2.act2``.
``shortcut`` is ``nn.Identity`` or ``OptionAShortcut`` (stride-2 subsample + zero channel padding,
no parameters). Kaiming-normal initialisation of convs and the head, as the reference code.
With width 16: 269,722 parameters on 3x32x32 input and 10 classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.models._common import check_common, set_sites
from intertwiner.models._resnet import CifarResNet


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal weights on every Conv2d and Linear (biases keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class ResNet20(CifarResNet):
    """ResNet-20 (``blocks_per_stage=3``; 6n+2 layers in general)."""

    def __init__(
        self,
        *,
        activation: Any = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 16,
        blocks_per_stage: int = 3,
    ):
        check_common(in_channels, input_size, num_classes)
        if int(width) < 1 or int(blocks_per_stage) < 1:
            raise ShapeError(f"width ({width}) and blocks_per_stage must be positive ints")
        w = int(width)
        super().__init__(
            activation=activation,
            num_classes=num_classes,
            in_channels=in_channels,
            widths=[w, 2 * w, 4 * w],
            blocks=[int(blocks_per_stage)] * 3,
            strides=[1, 2, 2],
            shortcut="A",
        )
        kaiming_init(self)
        set_sites(self, self._site_names)
