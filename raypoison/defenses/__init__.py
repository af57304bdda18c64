"""Defenses: one registry, model-side (detect, repair) and data-side (flag) alike."""

from raypoison.core.registry import Component
from raypoison.defenses import data_side as _data_side  # noqa: F401  (registers the defenses)
from raypoison.defenses import trigger_inversion as _trigger_inversion  # noqa: F401
from raypoison.defenses import tuning as _tuning  # noqa: F401
from raypoison.defenses.base import Defense, Flags, TrainingSet, TrustedSet
from raypoison.defenses.registry import DEFENSES


def create_defense(component: Component) -> Defense:
    return DEFENSES.get(component.name)(component.params)


__all__ = ["DEFENSES", "Defense", "Flags", "TrainingSet", "TrustedSet", "create_defense"]
