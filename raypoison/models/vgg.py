"""VGG11 and VGG16 for small images: the convolutional stacks with BatchNorm, then one linear
layer on the 512 pooled features. On 32×32 inputs the last max-pool leaves 1×1. On 64×64 inputs
(Tiny-ImageNet) it leaves 2×2, which VGG16's ``last_pool`` turns into the 512 features: ``max``
is the benchmark's VGG16 (``aks2203/poisoning-benchmark`` ``models/vgg.py``, whose plan ends in a
sixth max-pool, made for 64-px images; the maximum over the whole map here, which is the same
at 64 px), ``avg`` (the default, which keeps the ids of the rows made before the option)
averages the map. Module names follow the common CIFAR VGG layout
(``features``, ``classifier``); a pool has no weights, so checkpoints load either way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS

PLANS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


@dataclass(frozen=True)
class VGG16Params:
    """``last_pool``: how the 2×2 map of 64-px inputs becomes 512 features (module docstring);
    on smaller inputs the map is 1×1 and both are the identity."""

    last_pool: Literal["avg", "max"] = "avg"


class VGGFeatures(nn.Module):
    def __init__(self, plan: Sequence[int | str], last_pool: str = "avg"):
        super().__init__()
        self.last_pool = last_pool
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
        if self.last_pool == "max":  # 2x2 at 64 px, as the benchmark's sixth max-pool takes it
            return nn.functional.adaptive_max_pool2d(out, 1).flatten(1)
        return nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)


@MODELS.register("vgg11")
class VGG11(ImageClassifier):
    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], image_size: int = 32):
        super().__init__(VGGFeatures(PLANS["vgg11"]), 512, num_classes, mean, std)


@MODELS.register("vgg16")
class VGG16(ImageClassifier):
    Params = VGG16Params

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int = 32, last_pool: str = "avg"):
        if last_pool not in ("avg", "max"):  # a checkpoint's record is not checked by the config
            raise ValueError(f"last_pool must be 'avg' or 'max', got {last_pool!r}")
        super().__init__(VGGFeatures(PLANS["vgg16"], last_pool), 512, num_classes, mean, std)
