from raypoison.attacks.base import Attack
from raypoison.core.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
