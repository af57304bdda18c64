"""Tiny-ImageNet in its standard layout (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` with ``val/val_annotations.txt``), grayscale images converted to RGB.

Orders are the benchmark's, so that its setup files' indices point at the same images: classes
are the sorted wnids; the training set and the validation set (the benchmark's test set) are the
text-sorted paths of their JPEG files (``val_0, val_1, val_10, val_100, …``), validation labels
looked up in the annotation file by file name. ``classes`` picks all 200, the first 100
(pre-training) or the last 100 (the transfer scenarios), whose labels are shifted down by 100 as
in the protocol; a subset keeps the sorted order.

The files must be what ``wnids.txt`` promises, or loading stops with a :class:`DataError`: a
training folder for every wnid and no other, none empty, every class with as many training
images as the others, every validation image annotated with a listed wnid, and every annotated
file present.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from raypoison.core.schema import parse_path
from raypoison.data.base import DatasetInfo, DataSource, ImageData
from raypoison.data.files import decode_files
from raypoison.data.registry import DATASETS
from raypoison.errors import DataError

TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)


@dataclass(frozen=True)
class TinyImageNetParams:
    # trial ids follow the content of what is read (wnids, train/ and val/), not the location
    root: str = field(metadata={"parse": parse_path,
                                "content": ("wnids.txt", "train/*", "val/*")})
    classes: Literal["all", "first100", "last100"] = "all"


def _jpegs(folder: Path) -> list[Path]:
    """The ``.JPEG`` files under ``folder``, sorted as text (the benchmark's sorted glob)."""
    return sorted(folder.rglob("*.JPEG"), key=lambda p: p.as_posix())


def _training_files(root: Path, wnids: list[str]) -> dict[str, list[Path]]:
    train_dir = root / "train"
    present = {p.name for p in train_dir.iterdir() if p.is_dir()}
    missing = [w for w in wnids if w not in present]
    if missing:
        raise DataError(f"{train_dir}: {len(missing)} class folders of wnids.txt are missing "
                        f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''})")
    extra = sorted(present - set(wnids))
    if extra:
        raise DataError(f"{train_dir}: {len(extra)} class folders are not in wnids.txt "
                        f"({', '.join(extra[:5])}); wnids.txt promises {len(wnids)} classes")
    files = {w: _jpegs(train_dir / w) for w in wnids}
    empty = [w for w, f in files.items() if not f]
    if empty:
        raise DataError(f"{train_dir}: class folders without JPEG images: {', '.join(empty[:5])}")
    counts = Counter(len(f) for f in files.values())
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        odd = [f"{w} ({len(f)})" for w, f in files.items() if len(f) != usual]
        raise DataError(f"{train_dir}: classes differ in size: most have {usual} images, "
                        f"{', '.join(odd[:5])}")
    return files


def _validation_files(root: Path, label_of: dict[str, int], wnids: set[str]
                      ) -> list[tuple[Path, int]]:
    annotations = root / "val" / "val_annotations.txt"
    wnid_of: dict[str, str] = {}
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in wnids:
            raise DataError(f"{annotations}:{number}: expected '<file>\\t<wnid>' with a wnid of "
                            f"wnids.txt, found {line[:80]!r}")
        wnid_of[parts[0]] = parts[1]
    images = _jpegs(root / "val")
    names = {p.name for p in images}
    absent = [name for name in wnid_of if name not in names]
    if absent:
        raise DataError(f"{root / 'val'}: {len(absent)} annotated images do not exist, e.g. "
                        f"{absent[0]}")
    unlabelled = [p for p in images if p.name not in wnid_of]
    if unlabelled:
        raise DataError(f"{unlabelled[0]}: not in {annotations.name} "
                        f"({len(unlabelled)} images without a label)")
    return [(p, label_of[wnid_of[p.name]]) for p in images if wnid_of[p.name] in label_of]


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
        listed = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
        wnids = sorted(set(listed))
        if len(wnids) != len(listed):
            raise DataError(f"{wnids_file}: lists a wnid twice")
        needed_classes = {"all": 1, "first100": 100, "last100": 101}[params.classes]
        if len(wnids) < needed_classes:
            raise DataError(f"{wnids_file}: classes '{params.classes}' needs at least "
                            f"{needed_classes} wnids, the file lists {len(wnids)}")
        chosen = {"all": wnids, "first100": wnids[:100], "last100": wnids[100:200]}[params.classes]
        shift = 100 if params.classes == "last100" else 0
        label_of = {w: wnids.index(w) - shift for w in chosen}
        files = _training_files(root, wnids)
        train = sorted((p for w in chosen for p in files[w]), key=lambda p: p.as_posix())
        val = _validation_files(root, label_of, set(wnids))
        if not val:
            raise DataError(f"{root / 'val'}: no validation images for classes {params.classes}")
        train_x = decode_files(train, str(train_dir))
        train_y = np.asarray([label_of[p.relative_to(train_dir).parts[0]] for p in train],
                             dtype=np.int64)
        test_x = decode_files([p for p, _ in val], str(root / "val"))
        test_y = np.asarray([label for _, label in val], dtype=np.int64)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(f"{root}: training images are {train_x.shape[2:]}, validation images "
                            f"{test_x.shape[2:]}")
        return ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y),
                         torch.from_numpy(test_x), torch.from_numpy(test_y), tuple(chosen),
                         TINY_MEAN, TINY_STD)
