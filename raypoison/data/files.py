"""Reading image files into uint8 arrays: folders or tar archives, decoded with Pillow."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from raypoison.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode(data: bytes, where: str) -> np.ndarray:
    """Bytes of an image file -> ``[H, W, 3]`` uint8 RGB (grayscale and palettes converted)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:
        raise DataError(f"{where}: not a readable image ({err})") from None


def iter_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every image file under a folder or inside a tar archive."""
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path.relative_to(root).as_posix(), path.read_bytes()
        return
    try:
        with tarfile.open(root) as archive:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name.lstrip("./"), handle.read()
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{root}: neither a folder nor a readable tar archive ({err})") from None


def stack(images: list[np.ndarray], where: str) -> np.ndarray:
    """``[N, H, W, 3]`` -> ``[N, 3, H, W]``, requiring one image size."""
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{where}: images differ in size: {sorted(shapes)[:3]}")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
