"""A small ConvNet that trains on a CPU in seconds to minutes: the model of smoke runs and tests."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


@MODELS.register("convnet")
class ConvNet(ImageClassifier):
    """Three conv blocks (w, 2w, 4w channels; w = ``width``, 32 by default) with pooling and a
    global average pool: 4w features."""

    @dataclass(frozen=True)
    class Params:
        width: int = 32

        def validate(self, path: str) -> None:
            from raypoison.errors import ConfigError

            if not 4 <= self.width <= 512:
                raise ConfigError(f"{path}.width", f"must be in [4, 512], got {self.width}")

    def __init__(self, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int = 32, width: int = 32):
        extractor = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        super().__init__(extractor, 4 * width, num_classes, mean, std)
