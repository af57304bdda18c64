"""CIFAR-10 and CIFAR-100 in torchvision's format (``cifar-10-batches-py/``,
``cifar-100-python/`` under ``root``), with the protocol's normalization.

The batches are pickles, read through the restricted unpickler. ``download: true`` asks
torchvision to fetch them first, which needs the internet.

Trial ids follow the content of the batch files the source reads (not the root's location, nor
other files beside them). Where they are not there yet (``download: true`` on a first run), the
root counts as empty, so download before the first run: ids computed before the download differ
from those after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raypoison.core.safe_pickle import restricted_load_file
from raypoison.core.schema import parse_path
from raypoison.data.base import DatasetInfo, DataSource, ImageData
from raypoison.data.registry import DATASETS
from raypoison.errors import DataError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # PROTOCOL.md §1, also used for CIFAR-100 pre-training
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class CifarParams:
    root: str = field(metadata={"parse": parse_path, "content": ("cifar-10-batches-py/*",)})
    download: bool = False


@dataclass(frozen=True)
class Cifar100Params:
    root: str = field(metadata={"parse": parse_path, "content": ("cifar-100-python/*",)})
    download: bool = False


def _read_batches(folder: Path, names: list[str], label_key: bytes, classes: int):
    """The images and labels of CIFAR batch files, each checked: 3,072 bytes an image, one
    integer label in [0, classes) per image."""
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = restricted_load_file(path, encoding="bytes")
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise DataError(f"{path}: not a CIFAR batch (expected keys b'data', {label_key!r})")
        try:
            data = np.asarray(batch[b"data"])
            label = np.asarray(batch[label_key])
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: not a CIFAR batch ({err})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: b'data' must be uint8 rows of 3,072 bytes (32x32 RGB), "
                            f"found {data.dtype} of shape {data.shape}")
        if label.ndim != 1 or label.dtype.kind not in "iu" or len(label) != len(data):
            raise DataError(f"{path}: {label_key!r} must hold one integer label per image "
                            f"({len(data)}), found {label.dtype} of shape {label.shape}")
        if len(label) and (label.min() < 0 or label.max() >= classes):
            raise DataError(f"{path}: labels must lie in [0, {classes}), found "
                            f"{label.min()} to {label.max()}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class _Cifar(DataSource):
    Params: ClassVar[type[Any]] = CifarParams
    folder: str
    train_files: list[str]
    test_files: list[str]
    meta_file: str
    label_key: bytes
    names_key: bytes
    classes: int

    @classmethod
    def describe(cls, params) -> DatasetInfo:
        return DatasetInfo(cls.classes, 50_000 // cls.classes, 32, 3, 50_000, 10_000)

    @classmethod
    def load(cls, params: CifarParams) -> ImageData:
        root = Path(params.root)
        if params.download:
            import torchvision

            getattr(torchvision.datasets, cls.name.upper())(str(root), download=True)
        folder = root / cls.folder
        if not folder.is_dir():
            raise DataError(f"{root}: expected the folder {cls.folder}/ of torchvision's "
                            f"{cls.name.upper()} (or set download: true where the internet is "
                            "reachable)")
        train_x, train_y = _read_batches(folder, cls.train_files, cls.label_key, cls.classes)
        test_x, test_y = _read_batches(folder, cls.test_files, cls.label_key, cls.classes)
        meta = restricted_load_file(folder / cls.meta_file, encoding="bytes")
        listed = meta.get(cls.names_key, []) if isinstance(meta, dict) else None
        if not isinstance(listed, list) or not all(isinstance(n, bytes) for n in listed):
            raise DataError(f"{folder / cls.meta_file}: expected a mapping with "
                            f"{cls.names_key!r}, a list of class names")
        names = tuple(n.decode(errors="replace") for n in listed)
        return ImageData(train_x, train_y, test_x, test_y,
                         names or tuple(str(i) for i in range(cls.classes)), CIFAR_MEAN, CIFAR_STD)


@DATASETS.register("cifar10")
class Cifar10(_Cifar):
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    meta_file = "batches.meta"
    label_key = b"labels"
    names_key = b"label_names"
    classes = 10


@DATASETS.register("cifar100")
class Cifar100(_Cifar):
    Params = Cifar100Params
    folder = "cifar-100-python"
    train_files = ["train"]
    test_files = ["test"]
    meta_file = "meta"
    label_key = b"fine_labels"
    names_key = b"fine_label_names"
    classes = 100
