"""A small ConvNet that trains on a CPU in seconds to minutes: the model of smoke runs and tests."""

from __future__ import annotations

from torch import nn

from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


@MODELS.register("convnet")
class ConvNet(ImageClassifier):
    """Three conv blocks (32-64-128 channels) with pooling, global average pool: 128 features."""

    def __init__(self, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int = 32, width: int = 32):
        extractor = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        super().__init__(extractor, 4 * width, num_classes, mean, std)
