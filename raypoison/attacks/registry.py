from raypoison.attacks.base import Attack
from raypoison.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
