"""An ImageFolder layout: ``train/<class>/<file>`` and ``test/<class>/<file>``, in a folder or a
tar archive (such as the CIFAR-10 JPEG copy). Classes are the sorted folder names; within a class,
files are in sorted order.

Class-major order is not the original order of a data set such as CIFAR-10, and setups index
the original order. ``train_order``, a ``.npy`` of the training labels in original order,
restores it: with files numbered in original within-class order, original image ``i`` is the
``k``-th file of class ``labels[i]``, where ``k`` is the rank of ``i`` among the indices of that
class. ``test_order`` does the same for a prefix of the test set (the labels of its first ``N``
original images). Beyond that prefix the test order stays class-major, and ``test_exact`` tells
trials that only the first ``N`` test indices are exact.

``classes`` keeps a subset of the classes (indices into the sorted names), relabelled in the
given order: e.g. pre-train on CIFAR-10's first five classes and transfer to the last five, the
shape of the benchmark's Tiny-ImageNet transfer scenario.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from raypoison.core.schema import optional_path, parse_path
from raypoison.data.base import DataSource, ImageData
from raypoison.data.files import decode, iter_files, stack
from raypoison.data.registry import DATASETS
from raypoison.errors import ConfigError, DataError


@dataclass(frozen=True)
class ImageFolderParams:
    # trial ids follow the content of train/ and test/ (or of the archive), not the location
    root: str = field(metadata={"parse": parse_path, "content": ("train/*", "test/*")})
    train_order: str | None = field(default=None, metadata={"parse": optional_path})
    test_order: str | None = field(default=None, metadata={"parse": optional_path})
    mean: tuple[float, ...] | None = None  # default: measured on the training images
    std: tuple[float, ...] | None = None
    classes: tuple[int, ...] | None = None  # a subset, by index in sorted order; relabelled 0..k-1

    def validate(self, path: str) -> None:
        picked = self.classes
        if picked is not None and (not picked or len(set(picked)) != len(picked)
                                   or min(picked) < 0):
            raise ConfigError(f"{path}.classes",
                              f"give distinct class indices >= 0, got {list(picked)}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ConfigError(f"{path}.{key}", f"needs 3 values, got {len(value)}")


def _check_npy_size(path: str) -> None:
    """A ``.npy`` file holds the bytes its header claims (a 128-byte header can claim 10**12
    labels, which ``np.load`` would allocate before finding the data short)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"a .npy file of version {version}, not 1.0 or 2.0")
        shape, _, dtype = readers[version](f)
        held = os.fstat(f.fileno()).st_size - f.tell()
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if claimed > held:
        raise ValueError(f"its header claims {claimed:,} bytes of data, the file holds {held:,}")


def read_order(path: str) -> np.ndarray:
    """An order file: a ``.npy`` array of class labels (whole numbers ≥ 0, one dimension), read
    without pickles; anything else is refused naming the file."""
    try:
        _check_npy_size(path)
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a .npy array of class labels ({type(err).__name__}: "
                        f"{str(err)[:120].split('. ')[0]})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iuf" or len(labels) == 0:
        raise DataError(f"{path}: expected a non-empty list of class labels, found an array of "
                        f"shape {labels.shape} and type {labels.dtype}")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise DataError(f"{path}: class labels must be whole numbers")
    if labels.min() < 0:
        raise DataError(f"{path}: class labels must be ≥ 0, found {labels.min()}")
    return labels.astype(np.int64)


def original_order(class_major_labels: np.ndarray, original_labels: np.ndarray,
                   where: str) -> np.ndarray:
    """Permutation ``p`` with ``class_major[p]`` in original order (see module docstring)."""
    counts = np.bincount(class_major_labels, minlength=original_labels.max() + 1)
    wanted = np.bincount(original_labels, minlength=len(counts))
    if len(wanted) != len(counts) or np.any(wanted > counts):
        raise DataError(f"{where}: the order file's class counts {wanted.tolist()} do not fit "
                        f"the files' {counts.tolist()}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.zeros(len(original_labels), dtype=np.int64)
    seen: dict[int, int] = defaultdict(int)
    for i, label in enumerate(original_labels):
        rank[i] = seen[int(label)]
        seen[int(label)] += 1
    return starts[original_labels] + rank


def _load_split(files: dict[str, list[tuple[str, bytes]]], classes: list[str], split: str,
                root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(classes):
        entries = sorted(files.get(f"{split}/{name}", []))
        for rel, data in entries:
            images.append(decode(data, f"{root}:{split}/{name}/{rel}"))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images under {split}/<class>/")
    return stack(images, f"{root}:{split}"), np.asarray(labels, dtype=np.int64)


@DATASETS.register("imagefolder")
class ImageFolder(DataSource):
    Params = ImageFolderParams

    @classmethod
    def load(cls, params: ImageFolderParams) -> ImageData:
        root = Path(params.root)
        files: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for rel, data in iter_files(root):
            parts = rel.split("/")
            for i in range(len(parts) - 2):  # tolerate a top folder inside an archive
                if parts[i] in ("train", "test"):
                    files[f"{parts[i]}/{parts[i + 1]}"].append(("/".join(parts[i + 2:]), data))
                    break
        classes = sorted({key.split("/", 1)[1] for key in files if key.startswith("train/")})
        if not classes:
            raise DataError(f"{root}: expected train/<class>/<image> and test/<class>/<image>")
        missing = sorted({k.split("/", 1)[1] for k in files if k.startswith("test/")} - set(classes))
        if missing:
            raise DataError(f"{root}: test classes {missing} have no training folder")
        train_x, train_y = _load_split(files, classes, "train", root)
        test_x, test_y = _load_split(files, classes, "test", root)
        test_exact = None
        if params.train_order:
            order = read_order(params.train_order)
            if len(order) != len(train_y):
                raise DataError(f"{params.train_order}: {len(order)} labels for "
                                f"{len(train_y)} training images")
            perm = original_order(train_y, order, params.train_order)
            train_x, train_y = train_x[perm], train_y[perm]
        if params.test_order:
            prefix = read_order(params.test_order)
            head = original_order(test_y, prefix, params.test_order)
            rest = np.setdiff1d(np.arange(len(test_y)), head)
            perm = np.concatenate([head, rest])
            test_x, test_y = test_x[perm], test_y[perm]
            test_exact = len(prefix)
        images = ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y),
                         torch.from_numpy(test_x), torch.from_numpy(test_y), tuple(classes),
                         params.mean or (), params.std or (), test_exact)
        if params.classes is not None:
            beyond = [k for k in params.classes if k >= len(classes)]
            if beyond:
                raise DataError(f"{root}: classes {beyond} do not exist; the folder has "
                                f"{len(classes)} classes, 0 to {len(classes) - 1}")
            images = images.select_classes(params.classes)
        tested = set(images.test_y.unique().tolist())
        untested = [name for i, name in enumerate(images.classes) if i not in tested]
        if untested:  # every class may be drawn as a target, which is a test image
            raise DataError(f"{root}: training classes {untested[:5]} have no test folder "
                            "(test/<class>/<image>)")
        if not (params.mean and params.std):  # measure them on the images kept
            x = images.train_x.float() / 255
            images.mean = params.mean or tuple(x.mean(dim=(0, 2, 3)).tolist())
            images.std = params.std or tuple(x.std(dim=(0, 2, 3)).tolist())
        return images
