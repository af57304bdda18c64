"""The in-memory form of every data set: uint8 image tensors plus integer labels."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from raypoison.core.registry import NoParams

SPLITS = ("train_x", "train_y", "test_x", "test_y")  # the tensors of an ImageData


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

    def to_arrays(self) -> dict[str, Any]:
        """This data set as numpy arrays and plain values, the form Ray's object store shares
        without a copy: every process on a node that gets it maps the same memory."""
        arrays = {name: np.ascontiguousarray(getattr(self, name).cpu().numpy())
                  for name in SPLITS}
        return {**arrays, "classes": self.classes, "mean": self.mean, "std": self.std,
                "test_exact": self.test_exact}

    @classmethod
    def from_arrays(cls, packed: dict[str, Any]) -> ImageData:
        """The inverse of :meth:`to_arrays`, without copying the arrays.

        Arrays from the object store are read-only and shared by every worker of the node, so
        nothing may write into these tensors in place; the trial code only indexes them (a copy)
        or moves them to a device (a copy on a GPU). ``tests/test_shared_data.py`` checks that a
        run of every kind of trial leaves them unchanged.
        """
        with warnings.catch_warnings():  # torch warns that the arrays are not writable
            warnings.simplefilter("ignore", UserWarning)
            train_x, train_y, test_x, test_y = (torch.from_numpy(packed[name]) for name in SPLITS)
        return cls(train_x, train_y, test_x, test_y, tuple(packed["classes"]), tuple(packed["mean"]),
                   tuple(packed["std"]), packed["test_exact"])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in SPLITS)

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
