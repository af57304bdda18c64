from raypoison.defenses.base import Defense
from raypoison.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")
