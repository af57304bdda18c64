"""The reference trial-folder format of the benchmark's code, for exchanging poisons.

A folder holds ``poisons.pickle`` (a list of ``(PIL image, label)``), ``base_indices.pickle``
(the training indices the poisons replace) and ``target.pickle``: ``(PIL image, target label)``,
or for a backdoor ``(PIL image, target label, patch, [start_x, start_y])``, the patch a float
``[3, p, p]`` array in [0, 1] that the reference evaluator pastes on the target with its top-left
pixel at column ``start_x``, row ``start_y``. A patch trigger is exported that way (as a float32
numpy array, which the reference converts with ``torch.tensor``); blend and warp triggers, and
patches of ``opacity`` below 1, have no place in the format and are exported without it. A patch
read back is turned into uint8 the way the reference's ``ToPILImage`` does (×255, truncated).

Folders written elsewhere are read through the restricted unpickler, which admits Pillow images,
numpy arrays and (in ``target.pickle``) a pickled torch tensor, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raypoison.core.safe_pickle import restricted_load_file
from raypoison.data.triggers import PatchTrigger, Trigger
from raypoison.errors import DataError

FILES = ("poisons.pickle", "base_indices.pickle", "target.pickle")


@dataclass
class TrialFolder:
    images: torch.Tensor  # uint8 [B, C, H, W]
    labels: tuple[int, ...]
    base_indices: tuple[int, ...]
    target_image: torch.Tensor  # uint8 [C, H, W]
    target_label: int
    patch: torch.Tensor | None = None  # uint8 [3, p, p]: a backdoor's trigger
    patch_at: tuple[int, int] | None = None  # (start_x, start_y): its top-left column and row

    def trigger(self) -> PatchTrigger | None:
        """The patch as a trigger at its stored position, or None."""
        if self.patch is None or self.patch_at is None:
            return None
        x, y = self.patch_at
        description = json.dumps({"kind": "trial-folder", "size": int(self.patch.shape[-1]),
                                  "start_x": x, "start_y": y,
                                  "sha256": hashlib.sha256(self.patch.numpy().tobytes()).hexdigest()},
                                 sort_keys=True)
        return PatchTrigger(self.patch, "top-left", 0, description, at=(y, x))


def patch_position(trigger: Trigger, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """A patch trigger's pattern and ``(start_x, start_y)`` on ``height × width`` images; None for
    triggers the format cannot hold."""
    if not isinstance(trigger, PatchTrigger) or trigger.opacity != 1:
        return None  # the format's patch replaces the pixels it covers
    rows, cols = trigger.region(height, width)
    return trigger.pattern, (cols.start, rows.start)


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), "RGB")


def _from_pil(image: object, where: str) -> torch.Tensor:
    if not isinstance(image, Image.Image):
        raise DataError(f"{where}: expected an image, found {type(image).__name__}")
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def _indices(value: object, where: str) -> tuple[int, ...]:
    """Base indices as integers: an integer array or a list of ints; floats are refused rather
    than truncated (41748.9 is not an index)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iu" and not (array.dtype == object and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in array.ravel())):
        raise DataError(f"{where}: base indices must be integers, found {array.dtype} values "
                        f"such as {array.ravel()[:3].tolist()}")
    if array.size and int(array.min()) < 0:
        raise DataError(f"{where}: base indices must be ≥ 0, found {int(array.min())}")
    return tuple(int(i) for i in array.ravel())


def trial_folder_files(trial: TrialFolder) -> dict[str, bytes]:
    """The three files of a trial folder, as bytes (to write anywhere, atomically)."""
    poisons = [(_to_pil(im), int(lbl)) for im, lbl in zip(trial.images, trial.labels, strict=True)]
    return {
        "poisons.pickle": pickle.dumps(poisons, protocol=4),
        "base_indices.pickle": pickle.dumps(np.asarray(trial.base_indices, dtype=np.int64),
                                            protocol=4),
        "target.pickle": pickle.dumps(_target_tuple(trial), protocol=4),
    }


def _target_tuple(trial: TrialFolder) -> tuple:
    pair = (_to_pil(trial.target_image), int(trial.target_label))
    if trial.patch is None or trial.patch_at is None:
        return pair
    patch = trial.patch.cpu().numpy().astype(np.float32) / 255
    return (*pair, patch, [int(trial.patch_at[0]), int(trial.patch_at[1])])


def _read_patch(value: object, at: object, size: tuple[int, ...], where: str
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The patch as uint8 and its ``(start_x, start_y)``, after its shape and position are known
    to fit the ``size`` (height, width) of the target image: a pickled tensor's shape comes
    from the file (stride 0 lets a few bytes claim any size), so nothing is copied before."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[0] != 3 \
            or value.shape[1] != value.shape[2] or value.dtype.kind not in "fiu":
        raise DataError(f"{where}: the patch must be a [3, p, p] array, found "
                        f"{getattr(value, 'shape', type(value).__name__)}")
    if not isinstance(at, list | tuple) or len(at) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in at):
        raise DataError(f"{where}: the patch position must be [start_x, start_y] integers, "
                        f"found {str(at)[:80]}")
    position = (int(at[0]), int(at[1]))
    _check_patch_fits(value.shape[-1], position, size, where)
    floats = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if value.dtype.kind == "f" and not bool(((floats >= 0) & (floats <= 1)).all()):
        raise DataError(f"{where}: the patch's values must lie in [0, 1]")
    if value.dtype.kind != "f" and not bool(((floats >= 0) & (floats <= 255)).all()):
        raise DataError(f"{where}: an integer patch's values must lie in [0, 255], found "
                        f"{int(floats.min())} to {int(floats.max())}")
    patch = floats if value.dtype.kind != "f" else (floats * 255).floor()  # ToPILImage truncates
    return patch.to(torch.uint8).contiguous(), position


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
    # base indices are a few thousand integers at most: a bound of 1 MB
    indices = restricted_load_file(folder / "base_indices.pickle", allow_images=True,
                                   max_array_bytes=2**20)
    # one image and its patch: 16 MB holds a float patch the size of a 1,000-pixel image
    target = restricted_load_file(folder / "target.pickle", allow_images=True, allow_tensors=True,
                                  max_array_bytes=2**24)
    if not isinstance(poisons, list) or not all(isinstance(p, tuple) and len(p) == 2
                                                for p in poisons):
        raise DataError(f"{folder}/poisons.pickle: expected a list of (image, label) pairs")
    if not isinstance(target, tuple) or len(target) not in (2, 4):
        raise DataError(f"{folder}/target.pickle: expected (image, label) or (image, label, "
                        "patch, [start_x, start_y])")
    target_image = _from_pil(target[0], f"{folder}/target.pickle")
    patch, patch_at = (_read_patch(target[2], target[3], tuple(target_image.shape[1:]),
                                   f"{folder}/target.pickle")
                       if len(target) == 4 else (None, None))
    images = [_from_pil(im, f"{folder}/poisons.pickle[{i}]") for i, (im, _) in enumerate(poisons)]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(f"{folder}/poisons.pickle: images differ in size {sorted(shapes)}")
    stacked = torch.stack(images) if images else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return TrialFolder(
        images=stacked,
        labels=tuple(_label(lbl, f"{folder}/poisons.pickle[{i}]")
                     for i, (_, lbl) in enumerate(poisons)),
        base_indices=_indices(indices, f"{folder}/base_indices.pickle"),
        target_image=target_image,
        target_label=_label(target[1], f"{folder}/target.pickle"),
        patch=patch,
        patch_at=patch_at,
    )


def _label(value: object, where: str) -> int:
    """A class label as the file stores it: an integer (a float such as 1.9 would be cut to 1
    and a poison's label silently changed)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{where}: a label must be an integer class, found {str(value)[:40]!r} "
                        f"({type(value).__name__})")
    return int(value)


def _check_patch_fits(side: int, at: tuple[int, int], size: tuple[int, ...], where: str) -> None:
    """A ``side``-pixel patch pasted at ``[start_x, start_y]`` lies inside the target image, or
    the victim would train before the trigger is found to be impossible."""
    x, y = at
    height, width = size[0], size[1]
    if x < 0 or y < 0 or x + side > width or y + side > height:
        raise DataError(f"{where}: a {side}x{side} patch at [start_x={x}, start_y={y}] does not "
                        f"fit in the {width}x{height} target image")
