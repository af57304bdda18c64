"""Tiny-ImageNet in its standard layout (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` with ``val/val_annotations.txt``), grayscale images converted to RGB.

Classes are the sorted wnids and the training set is in sorted path order, as in the benchmark;
the validation set (the benchmark's test set) is in the annotation file's order. ``classes``
picks all 200, the first 100 (pre-training) or the last 100 (the transfer scenarios), whose labels
are shifted down by 100 as in the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from raypoison.config import parse_path
from raypoison.data.base import DatasetInfo, DataSource, ImageData
from raypoison.data.files import decode, stack
from raypoison.data.registry import DATASETS
from raypoison.errors import DataError

TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)


@dataclass(frozen=True)
class TinyImageNetParams:
    root: str = field(metadata={"parse": parse_path})
    classes: Literal["all", "first100", "last100"] = "all"


@DATASETS.register("tinyimagenet")
class TinyImageNet(DataSource):
    Params = TinyImageNetParams

    @classmethod
    def describe(cls, params: TinyImageNetParams) -> DatasetInfo | None:
        return None  # the class count depends on the files

    @classmethod
    def load(cls, params: TinyImageNetParams) -> ImageData:
        root = Path(params.root)
        wnids_file, train_dir = root / "wnids.txt", root / "train"
        annotations = root / "val" / "val_annotations.txt"
        for needed in (wnids_file, train_dir, annotations):
            if not needed.exists():
                raise DataError(f"{root}: expected {needed.relative_to(root)} (Tiny-ImageNet's "
                                "standard layout)")
        wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
        chosen = {"all": wnids, "first100": wnids[:100], "last100": wnids[100:200]}[params.classes]
        shift = 100 if params.classes == "last100" else 0
        label_of = {w: wnids.index(w) - shift for w in chosen}
        train = sorted(p for w in chosen for p in (train_dir / w / "images").glob("*.JPEG"))
        train_x = stack([decode(p.read_bytes(), str(p)) for p in train], str(train_dir))
        train_y = np.asarray([label_of[p.parent.parent.name] for p in train], dtype=np.int64)
        val = []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in label_of:
                val.append((root / "val" / "images" / parts[0], label_of[parts[1]]))
        if not train or not val:
            raise DataError(f"{root}: no training or validation images for classes "
                            f"{params.classes}")
        test_x = stack([decode(p.read_bytes(), str(p)) for p, _ in val], str(root / "val"))
        test_y = np.asarray([label for _, label in val], dtype=np.int64)
        return ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y),
                         torch.from_numpy(test_x), torch.from_numpy(test_y), tuple(chosen),
                         TINY_MEAN, TINY_STD)
