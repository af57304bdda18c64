"""A synthetic image classification set, deterministic by seed, for tests and smoke runs.

Each class has a smooth random colour pattern; an image is its class pattern, shifted by a few
pixels, with a random brightness change and pixel noise. A small ConvNet learns it in seconds but
not perfectly, so success rates and accuracies move in ways a test can see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raypoison.data.base import DatasetInfo, DataSource, ImageData
from raypoison.data.registry import DATASETS
from raypoison.errors import ConfigError


@dataclass(frozen=True)
class SyntheticParams:
    classes: int = 10
    image_size: int = 16
    train_per_class: int = 100
    test_per_class: int = 50
    noise: float = 0.35
    seed: int = 0

    def validate(self, path: str) -> None:
        if self.classes < 2:
            raise ConfigError(f"{path}.classes", f"must be at least 2, got {self.classes}")
        if self.image_size < 8:
            raise ConfigError(f"{path}.image_size", f"must be at least 8, got {self.image_size}")
        for key in ("train_per_class", "test_per_class"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{path}.{key}", f"must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.noise <= 1:
            raise ConfigError(f"{path}.noise", f"must be in [0, 1], got {self.noise}")


def _images(patterns: torch.Tensor, labels: torch.Tensor, noise: float, g: torch.Generator):
    n, (c, h, w) = len(labels), patterns.shape[1:]
    shift = 2
    padded = F.pad(patterns, (shift, shift, shift, shift), mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    base = padded[labels][torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                          rows, cols]
    brightness = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = base * brightness + noise * torch.randn(n, c, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@DATASETS.register("synthetic")
class Synthetic(DataSource):
    Params = SyntheticParams

    @classmethod
    def describe(cls, params: SyntheticParams) -> DatasetInfo:
        return DatasetInfo(params.classes, params.train_per_class, params.image_size, 3,
                           params.classes * params.train_per_class,
                           params.classes * params.test_per_class)

    @classmethod
    def load(cls, params: SyntheticParams) -> ImageData:
        g = torch.Generator().manual_seed(params.seed)
        size = params.image_size
        coarse = torch.rand(params.classes, 3, 4, 4, generator=g)
        patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        patterns = 0.15 + 0.7 * patterns
        train_y = torch.arange(params.classes).repeat_interleave(params.train_per_class)
        test_y = torch.arange(params.classes).repeat_interleave(params.test_per_class)
        train_x = _images(patterns, train_y, params.noise, g)
        test_x = _images(patterns, test_y, params.noise, g)
        mean = tuple((train_x.float() / 255).mean(dim=(0, 2, 3)).tolist())
        std = tuple((train_x.float() / 255).std(dim=(0, 2, 3)).tolist())
        return ImageData(
            train_x, train_y, test_x, test_y,
            classes=tuple(f"class{i}" for i in range(params.classes)), mean=mean, std=std,
        )
