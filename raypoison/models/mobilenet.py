"""MobileNetV2 for 32×32 inputs: stride 1 in the stem and the second stage, as in the common CIFAR
variant; 1280 penultimate features. Module names follow that variant's layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS

# (expansion, out channels, blocks, stride)
PLAN = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
        (6, 160, 3, 2), (6, 320, 1, 1))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        hidden = expansion * c_in
        self.conv1 = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride == 1 and c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, c_in = [], 32
        for expansion, c_out, n, stride in PLAN:
            for j in range(n):
                blocks.append(Block(c_in, c_out, expansion, stride if j == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@MODELS.register("mobilenetv2")
class MobileNetV2(ImageClassifier):
    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], image_size: int = 32):
        super().__init__(MobileNetV2Features(), 1280, num_classes, mean, std)
