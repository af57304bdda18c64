"""CIFAR-style ResNet-18 and ResNet-34: a 3×3 stride-1 stem and no max-pool on 32×32 inputs;
on 64×64 inputs ResNet-34 takes the 7×7 stride-2 stem the Tiny-ImageNet benchmark uses.

Module names follow the common CIFAR ResNet layout (``conv1``, ``bn1``, ``layer1``…``layer4``,
``shortcut``), so reference checkpoints map onto the extractor by prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raypoison.errors import ConfigError
from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetFeatures(nn.Module):
    def __init__(self, blocks: tuple[int, int, int, int], large_stem: bool, width: int = 64):
        super().__init__()
        if large_stem:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in, layers = width, []
        stages = (width, 2 * width, 4 * width, 8 * width)
        for i, (width, n) in enumerate(zip(stages, blocks, strict=True)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@dataclass(frozen=True)
class ResNetParams:
    """``width``: channels of the stem and first stage (64, the standard networks); the stages
    have ``width`` x 1, 2, 4, 8 and the features ``8 * width`` dimensions. A narrower ResNet-18
    keeps the depth of the benchmark's extractor at a cost a CPU can pay."""

    width: int = 64

    def validate(self, path: str) -> None:
        if not 4 <= self.width <= 256:
            raise ConfigError(f"{path}.width", f"must be in [4, 256], got {self.width}")


@MODELS.register("resnet18")
class ResNet18(ImageClassifier):
    Params = ResNetParams

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int = 32, width: int = 64):
        super().__init__(ResNetFeatures((2, 2, 2, 2), large_stem=False, width=width), 8 * width,
                         num_classes, mean, std)


@MODELS.register("resnet34")
class ResNet34(ImageClassifier):
    Params = ResNetParams

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int = 32, width: int = 64):
        super().__init__(ResNetFeatures((3, 4, 6, 3), large_stem=image_size >= 64, width=width),
                         8 * width, num_classes, mean, std)
