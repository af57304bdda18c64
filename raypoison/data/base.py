"""The in-memory form of every data set: uint8 image tensors plus integer labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What the config layer can know about a source without loading it."""

    num_classes: int
    min_train_per_class: int


@dataclass
class ImageData:
    """Images as uint8 ``[N, C, H, W]`` tensors, labels as int64 ``[N]``.

    ``mean`` and ``std`` are the per-channel statistics that models trained on this data set
    normalize with; they travel in checkpoints so that a model always sees inputs in ``[0, 1]``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_exact: int | None = None  # only the first N test images are in the original order

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.classes,
            self.mean,
            self.std,
            self.test_exact,
        )


class DataSource:
    """Registry entry shape for data sets: ``Params`` plus ``load``."""

    name: ClassVar[str]

    class Params:  # replaced by each source's frozen dataclass
        pass

    @classmethod
    def describe(cls, params: Any) -> DatasetInfo | None:
        """Sizes known from the parameters alone, or None if only loading can tell."""
        return None

    @classmethod
    def load(cls, params: Any) -> ImageData:
        raise NotImplementedError
