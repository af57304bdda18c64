"""Model zoo: every model is an :class:`ImageClassifier` with ``features()`` and ``head``."""

from raypoison.models import convnet as _convnet  # noqa: F401  (registers the models)
from raypoison.models import mobilenet as _mobilenet  # noqa: F401
from raypoison.models import resnet as _resnet  # noqa: F401
from raypoison.models import vgg as _vgg  # noqa: F401
from raypoison.models.base import ImageClassifier, to_device
from raypoison.models.checkpoint import (
    build_model,
    checkpoint_bytes,
    load_checkpoint,
    params_mismatch,
)
from raypoison.models.registry import MODELS

__all__ = ["MODELS", "ImageClassifier", "build_model", "checkpoint_bytes", "load_checkpoint",
           "params_mismatch", "to_device"]
