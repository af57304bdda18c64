from raypoison.core.registry import Registry
from raypoison.data.base import DataSource

DATASETS: Registry[DataSource] = Registry("data set")
