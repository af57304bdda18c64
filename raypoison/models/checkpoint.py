"""Checkpoints: weights plus the metadata needed to rebuild the model.

The project's format is ``{"format": "raypoison/1", "arch", "num_classes", "mean", "std",
"state_dict", "meta"}``. Files are read with ``torch.load(weights_only=True)``, so a checkpoint can
hold tensors and plain values only and loading one never runs code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from raypoison.errors import DataError
from raypoison.models.base import ImageClassifier
from raypoison.models.registry import MODELS

FORMAT = "raypoison/1"


def build_model(arch: str, num_classes: int, mean, std) -> ImageClassifier:
    return MODELS.get(arch)(num_classes=num_classes, mean=tuple(mean), std=tuple(std))


def checkpoint_bytes(model: ImageClassifier, meta: dict[str, Any]) -> bytes:
    payload = {
        "format": FORMAT,
        "arch": model.name,
        "num_classes": model.head.out_features,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(source: bytes | str | Path, where: str = "") -> tuple[ImageClassifier, dict]:
    """Rebuild a model from checkpoint bytes or a file; returns ``(model, meta)``."""
    where = where or (str(source) if not isinstance(source, bytes) else "checkpoint")
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with stream:
            payload = torch.load(stream, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{where}: checkpoint file not found") from None
    except Exception as err:  # torch raises many kinds for a corrupt or unsafe file
        raise DataError(f"{where}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{where}: not a raypoison checkpoint (expected format {FORMAT!r})")
    model = build_model(payload["arch"], payload["num_classes"], payload["mean"], payload["std"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise DataError(f"{where}: weights do not fit {payload['arch']}: {err}") from None
    return model, dict(payload.get("meta", {}))
