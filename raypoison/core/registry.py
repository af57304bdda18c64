"""One registry shape for data sets, models, attacks and defenses, and the entry a config picks.

An entry is a class with a ``name`` and a frozen ``Params`` dataclass that declares its parameters
with defaults; the config layer validates user parameters against ``Params`` before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from raypoison.core.schema import build, check_name, convert, quote
from raypoison.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class NoParams:
    """The ``Params`` of a registry entry that declares none: a config may set nothing."""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin a test registered for itself)."""
        self._entries.pop(name, None)

    def get(self, name: str, path: str = "") -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(path, f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


@dataclass(frozen=True)
class Component:
    """A registry entry chosen by name, with its validated ``Params`` instance.

    ``label`` tells two entries of the same name apart (e.g. an attack at two strengths); it
    defaults to the name and names the results partition.
    """

    name: str
    params: Any = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


def build_component(raw: Any, path: str, registry: Any) -> Component:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping with a 'name', got {quote(raw)}")
    for key in raw:
        if key not in ("name", "params", "label"):
            raise ConfigError(f"{path}.{key}", "unknown key (expected one of: name, params, label)")
    if "name" not in raw:
        raise ConfigError(f"{path}.name", "required key is missing")
    name = convert(raw["name"], str, f"{path}.name")
    cls = registry.get(name, f"{path}.name")
    params = build(cls.Params, raw.get("params"), f"{path}.params")
    label = convert(raw.get("label", name), str, f"{path}.label")
    check_name(f"{path}.label", label)
    return Component(name=name, params=params, label=label)
