from raypoison.data.base import DataSource
from raypoison.registry import Registry

DATASETS: Registry[DataSource] = Registry("data set")
