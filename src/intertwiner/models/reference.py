"""Reference architectures written the way torchvision writes them (ResNet-50 bottlenecks,
MobileNetV2 inverted residuals, DenseNet blocks, a U-Net, squeeze-excitation, GroupNorm): models
this project's tracer did not shape, used by the tests and ``benchmarks/trace.py``. Widths scale with
``width`` so that tests run tiny copies of the same code that the benchmark runs at full size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1 reduce, 3x3, 1x1 expand (x4), BN after each conv."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.relu(self.bn3(self.conv3(h)) + identity)


class ResNet50(nn.Module):
    """ResNet-50 (3, 4, 6, 3 bottlenecks); ``width=64`` is torchvision's size (25.6M parameters)."""

    def __init__(self, width: int = 64, layers=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inp = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inp, planes, 2 if (j == 0 and i > 0) else 1))
                inp = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNeXtBlockNet(nn.Module):
    """A stem and one ResNeXt bottleneck (1x1, grouped 3x3 with ``groups`` groups, 1x1)."""

    def __init__(self, c: int = 8, width: int = 8, groups: int = 2, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.conv1(h)))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        return self.head(F.relu(h + y).mean(dim=(2, 3)))


class ReusedActivations(nn.Module):
    """A ReLU module called twice and a functional ReLU: sites named ``relu``, ``relu#2`` and
    after the functional call's graph node, which capture and stitch must address."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 5)
        self.c, self.d = nn.Linear(5, 6), nn.Linear(6, 2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.b(self.relu(self.a(x))))
        return self.d(F.relu(self.c(h)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6(inplace=True)
        )
        self.blocks = nn.Sequential(
            InvertedResidual(w, w // 2, 1, 1),
            InvertedResidual(w // 2, w, 2, 6),
            InvertedResidual(w, w, 1, 6),
        )
        self.head = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, inp: int, growth: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(inp)
        self.conv1 = nn.Conv2d(inp, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(h)))], dim=1)


class DenseNet(nn.Module):
    def __init__(self, width: int = 8, growth: int = 4, layers: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.block = nn.Sequential(*[DenseLayer(width + i * growth, growth) for i in range(layers)])
        c = width + layers * growth
        self.norm = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.block(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class UNet(nn.Module):
    """Two levels: conv blocks, max pooling, a transposed-conv and an upsampling decoder path,
    skip connections concatenated on channels."""

    def __init__(self, width: int = 4, out_channels: int = 2):
        super().__init__()
        w = width

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
            )

        self.enc1, self.enc2, self.mid = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = block(4 * w, 2 * w)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = block(3 * w, w)
        self.pad = nn.ZeroPad2d(1)
        self.out = nn.Conv2d(w, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(self.pad(d1))


class SqueezeExcite(nn.Module):
    """A conv block gated per channel by ``sigmoid(fc2(relu(fc1(mean(h)))))``."""

    def __init__(self, c: int = 8, r: int = 2, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean(dim=(2, 3), keepdim=True)))))
        return self.head((h * gate).mean(dim=(2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self, c: int = 8, groups: int = 2, num_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.norm(self.conv1(x)))))
        return self.head(h.mean(dim=(2, 3)))


class LSTMTagger(nn.Module):
    def __init__(self, d: int = 6, hidden: int = 8, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.rnn = nn.LSTM(d, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(torch.relu(self.embed(x)))
        return self.head(torch.relu(self.fc(h)))
