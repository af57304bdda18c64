"""Data sets: every source loads into an in-memory :class:`ImageData` of uint8 tensors."""

from raypoison.core.registry import Component
from raypoison.data import cifar as _cifar  # noqa: F401  (registers the sources)
from raypoison.data import imagefolder as _imagefolder  # noqa: F401
from raypoison.data import synthetic as _synthetic  # noqa: F401
from raypoison.data import tinyimagenet as _tinyimagenet  # noqa: F401
from raypoison.data.base import DatasetInfo, DataSource, ImageData
from raypoison.data.registry import DATASETS


def load_dataset(component: Component) -> ImageData:
    """Load the data set a config ``Component`` names."""
    return DATASETS.get(component.name).load(component.params)


__all__ = ["DATASETS", "DataSource", "DatasetInfo", "ImageData", "load_dataset"]
