"""VGG11 and VGG16 for small images: the convolutional stacks with BatchNorm, then one linear
layer on the 512 pooled features. On 32×32 inputs the last max-pool leaves 1×1; on 64×64 inputs
(Tiny-ImageNet) the 2×2 map is average-pooled to 512 features. Module names follow the common
CIFAR VGG layout (``features``, ``classifier``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS

PLANS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class VGGFeatures(nn.Module):
    def __init__(self, plan: Sequence[int | str]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in plan:
            if isinstance(item, str):  # "M"
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.BatchNorm2d(item),
                           nn.ReLU(inplace=True)]
                c_in = item
        layers.append(nn.AvgPool2d(1, 1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)


@MODELS.register("vgg11")
class VGG11(ImageClassifier):
    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], image_size: int = 32):
        super().__init__(VGGFeatures(PLANS["vgg11"]), 512, num_classes, mean, std)


@MODELS.register("vgg16")
class VGG16(ImageClassifier):
    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], image_size: int = 32):
        super().__init__(VGGFeatures(PLANS["vgg16"]), 512, num_classes, mean, std)
