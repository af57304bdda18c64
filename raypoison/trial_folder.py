"""The reference trial-folder format of the benchmark's code, for exchanging poisons.

A folder holds ``poisons.pickle`` (a list of ``(PIL image, label)``), ``base_indices.pickle``
(the training indices the poisons replace) and ``target.pickle`` (``(PIL image, target label)``).
Folders written elsewhere are read through the restricted unpickler, which admits Pillow images
and numpy arrays and nothing else.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raypoison.errors import DataError
from raypoison.safe_pickle import restricted_load_file

FILES = ("poisons.pickle", "base_indices.pickle", "target.pickle")


@dataclass
class TrialFolder:
    images: torch.Tensor  # uint8 [B, C, H, W]
    labels: tuple[int, ...]
    base_indices: tuple[int, ...]
    target_image: torch.Tensor  # uint8 [C, H, W]
    target_label: int


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), "RGB")


def _from_pil(image: object, where: str) -> torch.Tensor:
    if not isinstance(image, Image.Image):
        raise DataError(f"{where}: expected an image, found {type(image).__name__}")
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def trial_folder_files(trial: TrialFolder) -> dict[str, bytes]:
    """The three files of a trial folder, as bytes (to write anywhere, atomically)."""
    poisons = [(_to_pil(im), int(lbl)) for im, lbl in zip(trial.images, trial.labels, strict=True)]
    return {
        "poisons.pickle": pickle.dumps(poisons, protocol=4),
        "base_indices.pickle": pickle.dumps(np.asarray(trial.base_indices, dtype=np.int64),
                                            protocol=4),
        "target.pickle": pickle.dumps((_to_pil(trial.target_image), int(trial.target_label)),
                                      protocol=4),
    }


def write_trial_folder(folder: str | Path, trial: TrialFolder) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in trial_folder_files(trial).items():
        (folder / name).write_bytes(data)


def read_trial_folder(folder: str | Path) -> TrialFolder:
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: not a trial folder (missing {', '.join(missing)})")
    poisons = restricted_load_file(folder / "poisons.pickle", allow_images=True)
    indices = restricted_load_file(folder / "base_indices.pickle", allow_images=True)
    target = restricted_load_file(folder / "target.pickle", allow_images=True)
    if not isinstance(poisons, list) or not all(isinstance(p, tuple) and len(p) == 2
                                                for p in poisons):
        raise DataError(f"{folder}/poisons.pickle: expected a list of (image, label) pairs")
    if not isinstance(target, tuple) or len(target) != 2:
        raise DataError(f"{folder}/target.pickle: expected an (image, label) pair")
    images = [_from_pil(im, f"{folder}/poisons.pickle[{i}]") for i, (im, _) in enumerate(poisons)]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(f"{folder}/poisons.pickle: images differ in size {sorted(shapes)}")
    stacked = torch.stack(images) if images else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return TrialFolder(
        images=stacked,
        labels=tuple(int(lbl) for _, lbl in poisons),
        base_indices=tuple(int(i) for i in np.asarray(indices).ravel()),
        target_image=_from_pil(target[0], f"{folder}/target.pickle"),
        target_label=int(target[1]),
    )
