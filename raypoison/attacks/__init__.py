"""Attacks: one module each, one crafting loop (:mod:`raypoison.attacks.crafting`), one registry."""

from collections.abc import Mapping
from typing import Any

from raypoison.attacks import backdoors as _backdoors  # noqa: F401  (registers the attacks)
from raypoison.attacks import controls as _controls  # noqa: F401
from raypoison.attacks import dirty_label as _dirty_label  # noqa: F401
from raypoison.attacks import external as _external  # noqa: F401
from raypoison.attacks import feature_collision as _fc  # noqa: F401
from raypoison.attacks import polytope as _polytope  # noqa: F401
from raypoison.attacks import witches_brew as _witches_brew  # noqa: F401
from raypoison.attacks.base import Attack, CraftResult, Poisons
from raypoison.attacks.registry import ATTACKS
from raypoison.core.registry import Component, build_component


def create_attack(component: Component | str, params: Mapping[str, Any] | None = None) -> Attack:
    """The attack a config entry names, or, from a notebook, ``create_attack(name, {params})``:
    the parameters are checked as a config's are (unknown keys and bad values are errors)."""
    if isinstance(component, str):
        component = build_component({"name": component, "params": dict(params or {})}, "attack",
                                    ATTACKS)
    return ATTACKS.get(component.name)(component.params)


__all__ = ["ATTACKS", "Attack", "CraftResult", "Poisons", "create_attack"]
