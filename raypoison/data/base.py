"""The in-memory form of every data set: uint8 image tensors plus integer labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raypoison.core.registry import NoParams


@dataclass(frozen=True)
class DatasetInfo:
    """What the config layer can know about a source without loading it."""

    num_classes: int
    min_train_per_class: int
    # the images' shape and the splits' sizes, where the parameters tell them (the cost planner
    # then needs no data)
    image_size: int | None = None
    channels: int = 3
    train_size: int | None = None
    test_size: int | None = None


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

    def select_classes(self, keep: Sequence[int]) -> ImageData:
        """The images of classes ``keep`` only, relabelled ``0..len(keep)-1`` in that order.

        Order within each split is kept, so ``test_exact`` becomes the number of kept images
        among the exact prefix (their indices change; setups must be sampled for the subset).
        """
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        lookup[torch.as_tensor(list(keep))] = torch.arange(len(keep))
        train_y, test_y = lookup[self.train_y.cpu()], lookup[self.test_y.cpu()]
        train, test = train_y >= 0, test_y >= 0
        exact = None if self.test_exact is None else int(test[:self.test_exact].sum())
        return ImageData(self.train_x[train], train_y[train], self.test_x[test], test_y[test],
                         tuple(self.classes[k] for k in keep), self.mean, self.std, exact)

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

    Params: ClassVar[type[Any]] = NoParams  # each source's frozen dataclass

    @classmethod
    def describe(cls, params: Any) -> DatasetInfo | None:
        """Sizes known from the parameters alone, or None if only loading can tell."""
        return None

    @classmethod
    def load(cls, params: Any) -> ImageData:
        raise NotImplementedError
