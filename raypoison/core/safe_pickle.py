"""A restricted unpickler for third-party pickles (reference setup files, CIFAR batches).

Plain ``pickle.load`` runs whatever a file names. This one admits only plain containers and the
numpy types needed to rebuild arrays and scalars; any other global is refused with an error that
names it. numpy 1.x files name ``numpy.core``, which numpy 2 calls ``numpy._core``; both resolve.
With ``allow_tensors``, a torch tensor pickled by ``pickle`` (the reference's backdoor patch) is
rebuilt too: its storage bytes go through ``torch.load(..., weights_only=True)``, never the
unrestricted ``torch.load`` that the tensor's own pickle names.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from raypoison.errors import DataError

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_multiarray = importlib.import_module("numpy._core.multiarray")
_numeric = importlib.import_module("numpy._core.numeric")
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_module, "_reconstruct")] = _multiarray._reconstruct
    _NUMPY_GLOBALS[(_module, "scalar")] = _multiarray.scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_GLOBALS[(_module, "_frombuffer")] = _numeric._frombuffer


def _storage_from_bytes(data: bytes) -> Any:
    import torch

    # a tensor pickled on a GPU names its device; rebuilt here on the CPU whatever the machine
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, and nothing more."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _tensor_globals() -> dict[tuple[str, str], Any]:
    import collections

    import torch._utils

    return {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
            ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
            ("_codecs", "encode"): _latin1,
            ("collections", "OrderedDict"): collections.OrderedDict}


def _pil_image() -> Any:
    from PIL import Image

    return Image.Image


MAX_ARRAY_BYTES = 256 * 2**20  # the largest array a third-party pickle may build (a CIFAR batch: 30 MB)


def _checked_size(shape: Any, dtype: Any, limit: int) -> None:
    """Refuse an array of ``shape`` and ``dtype`` over ``limit`` bytes, or one that holds Python
    objects (no third-party file this project reads has them, and numpy fills an object array
    before anything could check its size, or crashes on an object state set on another)."""
    kind = np.dtype(dtype)
    if kind.hasobject:
        raise pickle.UnpicklingError("refused an array of Python objects (dtype object): only "
                                     "arrays of numbers are allowed in this file")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod([max(int(d), 0) for d in dims], dtype=np.float64))
    if count * kind.itemsize > limit:
        raise pickle.UnpicklingError(f"refused an array of {count:,} elements ({kind}): over "
                                     f"the {limit:,}-byte bound")


def _bounded_array_type(limit: int) -> type:
    """An ``ndarray`` subclass that refuses to be created, or given a state, with more than
    ``limit`` bytes or with Python objects (:func:`_checked_size`): a pickle that calls
    ``numpy.ndarray(shape)`` or ``_reconstruct`` itself (26 bytes can ask for 8 GB) is refused
    before the allocation, while arrays rebuilt from the bytes the pickle carries load as usual."""

    class BoundedArray(np.ndarray):
        def __new__(cls, shape=(), dtype=float, *args, **kwargs):
            _checked_size(shape, dtype, limit)
            return super().__new__(cls, shape, dtype, *args, **kwargs)

        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise pickle.UnpicklingError("refused an array state that is not numpy's")
            _checked_size(state[-4], state[-3], limit)
            super().__setstate__(state)

    return BoundedArray


def _bounded_reconstruct(array: type, limit: int) -> Any:
    """numpy's ``_reconstruct`` (how a pickled array begins) building ``array``, the bounded
    subclass, whatever class the pickle names, after the same check."""
    def reconstruct(_subtype: Any, shape: Any, dtype: Any) -> Any:
        _checked_size(shape, dtype, limit)
        return _multiarray._reconstruct(array, shape, dtype)

    return reconstruct


def _plain(value: Any, limit: int) -> Any:
    """The loaded object with every array a plain ``ndarray``, each checked against the bound,
    and every tensor checked too: a tensor's size and strides come from the pickle, so a few
    bytes of storage can claim gigabytes (stride 0) that the first copy of it would allocate."""
    if isinstance(value, np.ndarray):
        if value.nbytes > limit:
            raise pickle.UnpicklingError(f"refused an array of {value.nbytes:,} bytes: over the "
                                         f"{limit:,}-byte bound")
        return value.view(np.ndarray) if type(value) is not np.ndarray else value
    if type(value).__module__.startswith("torch") and hasattr(value, "element_size"):
        nbytes = value.numel() * value.element_size()
        if nbytes > limit:
            raise pickle.UnpicklingError(f"refused a tensor of {nbytes:,} bytes: over the "
                                         f"{limit:,}-byte bound")
        return value
    if isinstance(value, list):
        return [_plain(v, limit) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, limit) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, limit) for k, v in value.items()}
    return value


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars; with ``allow_images``, also Pillow images, which rebuild
    from their mode, size and pixel bytes (the reference trial-folder format stores them)."""

    def __init__(self, file: IO[bytes], *, encoding: str = "ASCII", allow_images: bool = False,
                 allow_tensors: bool = False, max_array_bytes: int = MAX_ARRAY_BYTES):
        super().__init__(file, encoding=encoding)
        self.allow_images = allow_images
        self.allow_tensors = allow_tensors
        self.max_array_bytes = max_array_bytes
        self._array = _bounded_array_type(max_array_bytes)

    def load(self) -> Any:
        return _plain(super().load(), self.max_array_bytes)

    def find_class(self, module: str, name: str) -> Any:
        if self.allow_images and (module, name) == ("PIL.Image", "Image"):
            return _pil_image()
        if self.allow_tensors and (module, name) in (tensors := _tensor_globals()):
            return tensors[(module, name)]
        if (module, name) == ("numpy", "ndarray"):
            return self._array
        if name == "_reconstruct" and (module, name) in _NUMPY_GLOBALS:
            return _bounded_reconstruct(self._array, self.max_array_bytes)
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy arrays, scalars and plain Python "
                "containers are allowed in this file"
            ) from None


def restricted_loads(data: bytes, *, encoding: str = "ASCII", allow_images: bool = False,
                     allow_tensors: bool = False, max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding, allow_images=allow_images,
                               allow_tensors=allow_tensors, max_array_bytes=max_array_bytes).load()


def restricted_load_file(path: str | Path, *, encoding: str = "ASCII",
                         allow_images: bool = False, allow_tensors: bool = False,
                         max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return restricted_loads(path.read_bytes(), encoding=encoding, allow_images=allow_images,
                                allow_tensors=allow_tensors, max_array_bytes=max_array_bytes)
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: {err}") from None
    except Exception as err:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
