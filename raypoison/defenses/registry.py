from raypoison.core.registry import Registry
from raypoison.defenses.base import Defense

DEFENSES: Registry[Defense] = Registry("defense")
