"""Reading image files into uint8 arrays: folders or tar archives, decoded with Pillow."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from raypoison.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
COMPRESSED = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)  # the streams tarfile opens itself
STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # what their damage raises


def decode(data: bytes, where: str) -> np.ndarray:
    """Bytes of an image file -> ``[H, W, 3]`` uint8 RGB (grayscale and palettes converted)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:
        raise DataError(f"{where}: not a readable image ({err})") from None


def iter_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every image file under a folder or inside a tar archive.

    A compressed archive is read to its end once its members are out, so that gzip's, bzip2's
    or xz's check of the whole stream runs: tarfile stops at the archive's end marker, before
    gzip's trailer, and a bit flipped inside a JPEG of the archive would otherwise decode to a
    damaged image without any error (JPEG itself has no checksum). Damage or truncation found
    on the way, in the members or at the end, is one error naming the archive. A ``.tar.gz``
    with bytes other than zeros after its end is refused too (Python's gzip reads them as a
    broken next member). A folder of image files has no such check: a file damaged inside its
    compressed data decodes as it is.
    """
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path.relative_to(root).as_posix(), path.read_bytes()
        return
    try:
        archive = tarfile.open(root)  # noqa: SIM115  (closed by the with below)
    except (tarfile.TarError, *STREAM_ERRORS) as err:
        if _compressed_magic(root):  # cut or damaged before its first member
            raise DataError(f"{root}: the archive is damaged or truncated ({err})") from None
        raise DataError(f"{root}: neither a folder nor a readable tar archive ({err})") from None
    with archive:
        try:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name.lstrip("./"), handle.read()
            if isinstance(archive.fileobj, COMPRESSED):  # its trailer holds the check
                while archive.fileobj.read(1 << 20):
                    pass
        except (tarfile.TarError, *STREAM_ERRORS) as err:
            raise DataError(f"{root}: the archive is damaged or truncated ({err}): some image "
                            "in it may not be what was packed; fetch it again") from None


def _compressed_magic(path: Path) -> bool:
    """Whether ``path`` starts as a gzip, bzip2 or xz stream does."""
    try:
        with path.open("rb") as handle:
            head = handle.read(6)
    except OSError:
        return False
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


def stack(images: list[np.ndarray], where: str) -> np.ndarray:
    """``[N, H, W, 3]`` -> ``[N, 3, H, W]``, requiring one image size."""
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"{where}: images differ in size: {sorted(shapes)[:3]}")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def decode_files(paths: list[Path], where: str) -> np.ndarray:
    """Decode image files straight into one ``[N, 3, H, W]`` uint8 array, requiring one size.

    The array is allocated once from the first image's size and each image is written into it as
    it is decoded, so the peak is the array plus one image, not the list of images, their stack
    and its transpose (three copies) that :func:`stack` holds.
    """
    if not paths:
        return np.empty((0, 3, 0, 0), dtype=np.uint8)
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: listed but not readable ({err.strerror or err})") from None
        image = decode(data, str(path))
        if out is None:
            out = np.empty((len(paths), 3, *image.shape[:2]), dtype=np.uint8)
        elif image.shape[:2] != out.shape[2:]:
            raise DataError(f"{where}: images differ in size: {path} is {image.shape[:2]}, "
                            f"the first is {out.shape[2:]}")
        out[i] = image.transpose(2, 0, 1)
    assert out is not None  # paths is not empty
    return out
