from raypoison.models.base import ImageClassifier
from raypoison.registry import Registry

MODELS: Registry[ImageClassifier] = Registry("model")
