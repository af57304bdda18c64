from raypoison.data.base import DataSource
from raypoison.core.registry import Registry

DATASETS: Registry[DataSource] = Registry("data set")
