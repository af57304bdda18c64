from raypoison.core.registry import Registry
from raypoison.models.base import ImageClassifier

MODELS: Registry[ImageClassifier] = Registry("model")
