"""Checkpoints: weights plus the metadata needed to rebuild the model.

The project's format is ``{"format": "raypoison/1", "arch", "num_classes", "image_size", "mean",
"std", "state_dict", "meta"}``. The reference format of the benchmark's code, ``{"net":
state_dict}`` in the common CIFAR layouts (``linear`` or ``classifier`` as the last layer, an
optional ``module.`` prefix), is imported too; it names no architecture, so the config must.
Files are read with ``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain
values only, and loading one never runs code.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from raypoison.errors import ConfigError, DataError
from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS

FORMAT = "raypoison/1"


HEAD_NAMES = ("linear", "classifier", "fc")


def build_model(arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                image_size: int = 32,
                params: Any = None) -> ImageClassifier:
    """A new ``arch``; ``params`` is its ``Params`` instance or a mapping of its fields."""
    cls = MODELS.get(arch)
    if params is None:
        params = cls.Params()
    elif not dataclasses.is_dataclass(params):
        params = cls.Params(**dict(params))
    model = cast(Any, cls)(num_classes=num_classes, mean=tuple(mean), std=tuple(std), image_size=image_size,
                **dataclasses.asdict(params))
    model.arch_params = params
    return model


def params_mismatch(model: ImageClassifier, wanted: Any) -> str | None:
    """How ``model``'s architecture parameters (as its checkpoint recorded them) differ from the
    config's ``wanted``, or None. A raypoison checkpoint rebuilds the network it records, so a
    config that describes another one (another width, VGG16's other last pool) would otherwise
    compute with a network it did not ask for. Reference checkpoints record none: they are built
    from the config's and always agree."""
    held = getattr(model, "arch_params", None)
    if wanted is None or held is None or held == wanted:
        return None
    return (f"holds a {model.name} with {dataclasses.asdict(held)}, the config says "
            f"{dataclasses.asdict(wanted)}")


def checkpoint_bytes(model: ImageClassifier, meta: dict[str, Any]) -> bytes:
    payload = {
        "format": FORMAT,
        "arch": model.name,
        "num_classes": model.head.out_features,
        "image_size": int(meta.get("image_size", 32)),
        "params": dataclasses.asdict(getattr(model, "arch_params", None) or model.Params()),
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _check_fields(payload: dict, where: str) -> None:
    """The metadata a raypoison checkpoint rebuilds its model from, of the types it must have,
    before anything is built from it."""
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    def numbers(value: Any) -> bool:
        return isinstance(value, list | tuple) and len(value) in (1, 3) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)

    wrong = [name for name, ok in (
        ("arch", isinstance(payload.get("arch"), str)),
        ("num_classes", positive_int(payload.get("num_classes"))),
        ("image_size", positive_int(payload.get("image_size", 32))),
        ("mean", numbers(payload.get("mean"))), ("std", numbers(payload.get("std"))),
        ("params", isinstance(payload.get("params"), dict | None)),
        ("meta", isinstance(payload.get("meta", {}), dict)),
    ) if not ok]
    if wrong:
        shown = ", ".join(f"{k}={repr(payload.get(k))[:40]}" for k in wrong)
        raise DataError(f"{where}: a raypoison checkpoint with malformed metadata ({shown})")


def _tensors(state: Any, where: str) -> dict[str, torch.Tensor]:
    """A state dict of names and tensors, each holding the elements it claims (a tensor's
    shape and strides come from the file: stride 0 lets eight bytes claim gigabytes), or the
    error that names the file."""
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DataError(f"{where}: its weights are not a mapping of names to tensors")
    for key, value in state.items():
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise DataError(f"{where}: tensor {key} claims {tuple(value.shape)} but stores "
                            f"{value.untyped_storage().nbytes():,} bytes")
    return state


def _rebuilt(where: str, state: dict[str, torch.Tensor], arch: str, *args: Any,
             own: tuple[str, ...] = ()) -> ImageClassifier:
    """``build_model(arch, *args)`` with ``state`` loaded (and the model's own values of the
    keys in ``own``), the shapes of the tensors both have compared first on a model built on
    the meta device: the metadata (a class count, a width) would otherwise allocate whatever it
    claims before the weights could disagree with it; a model whose tensors fit the weights is
    no larger than they are. Which names may be missing or extra is left to
    ``load_state_dict`` (BatchNorm fills in a missing ``num_batches_tracked``, as in
    checkpoints of older PyTorch). A model that cannot be built on the meta device (one that
    reads a tensor's value while it is built) is built for real and compared there."""
    try:
        with torch.device("meta"):
            probe = build_model(arch, *args)
    except (RuntimeError, NotImplementedError):
        probe = None
    except (ConfigError, TypeError, ValueError) as err:
        raise DataError(f"{where}: cannot rebuild {arch}: {err}") from None
    if probe is not None:
        shapes = {k: v.shape for k, v in probe.state_dict().items() if k not in own}
        wrong = sorted(k for k in shapes.keys() & state.keys() if shapes[k] != state[k].shape)
        if wrong:
            shown = ", ".join(f"{k} {tuple(state[k].shape)} for {tuple(shapes[k])}"
                              for k in wrong[:3])
            raise DataError(f"{where}: weights do not fit {arch} as its metadata describes it "
                            f"({len(wrong)} tensors: {shown})")
    try:
        model = build_model(arch, *args)
    except (ConfigError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{where}: cannot rebuild {arch}: {err}") from None
    try:
        model.load_state_dict({**state, **{k: v for k, v in model.state_dict().items()
                                           if k in own}})
    except (RuntimeError, ValueError) as err:
        raise DataError(f"{where}: weights do not fit {arch}: {err}") from None
    return model


def _from_reference(state: dict, arch: str, mean, std, image_size: int, where: str,
                    params: Any = None):
    mapped = {}
    for key, value in _tensors(state, where).items():
        key = key.removeprefix("module.")
        first, _, rest = key.partition(".")
        mapped[f"head.{rest}" if first in HEAD_NAMES else f"extractor.{key}"] = value
    if "head.weight" not in mapped:
        raise DataError(f"{where}: no last layer named {' or '.join(HEAD_NAMES)} in the checkpoint")
    classes = mapped["head.weight"].shape[0] if mapped["head.weight"].ndim == 2 else 0
    model = _rebuilt(where, mapped, arch, classes, mean, std, image_size, params,
                     own=("mean", "std"))
    return model, {"arch": arch, "imported_from": "reference"}


def load_checkpoint(source: bytes | str | Path, where: str = "", *, arch: str | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    image_size: int = 32,
                    params: Any = None) -> tuple[ImageClassifier, dict]:
    """Rebuild a model from checkpoint bytes or a file; returns ``(model, meta)``.

    ``arch``, ``mean``, ``std`` and ``image_size`` are needed only for reference checkpoints,
    which do not record them (normally the scenario's model and data set).
    """
    where = where or (str(source) if not isinstance(source, bytes) else "checkpoint")
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with stream:
            payload = torch.load(stream, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{where}: checkpoint file not found") from None
    except Exception as err:  # torch raises many kinds for a corrupt or unsafe file
        raise DataError(f"{where}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(payload, dict) and "net" in payload and "format" not in payload:
        if arch is None or mean is None or std is None:
            raise DataError(f"{where}: a reference checkpoint needs its architecture and "
                            "normalization from the config")
        return _from_reference(payload["net"], arch, mean, std, image_size, where, params)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{where}: not a raypoison checkpoint (expected format {FORMAT!r}) "
                        "nor a reference one ({'net': state_dict})")
    _check_fields(payload, where)
    state = _tensors(payload["state_dict"], where)
    model = _rebuilt(where, state, payload["arch"], payload["num_classes"], payload["mean"],
                     payload["std"], payload.get("image_size", 32), payload.get("params"))
    return model, dict(payload.get("meta", {}))
