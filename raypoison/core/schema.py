"""The typed-YAML engine and the value parsers every config class is built with.

A leaf: it imports nothing of the project but :mod:`raypoison.errors`, so that the plugins (data
sets, models, attacks, defenses, triggers, recipes) can declare their ``Params`` with these
parsers while :mod:`raypoison.config` imports the plugins' registries. ``build(cls, raw, path)``
turns a YAML mapping into a frozen dataclass, checking keys, types and values, and every error
names the path of the offending key.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from raypoison.errors import ConfigError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


MAX_NAME_BYTES = 200  # a partition folder is "scenario=<name>": 255 bytes is the usual limit


_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxtuple, _QUOTE.maxdict = 3, 6, 6, 6


_QUOTE.maxset, _QUOTE.maxstring, _QUOTE.maxother = 6, 80, 80


def quote(value: Any) -> str:
    """``repr(value)`` cut to a bounded prefix (at most a few hundred characters, in bounded
    time, whatever the value): what error messages quote of the input."""
    return _QUOTE.repr(value)


def finite(value: float, path: str) -> float:
    """``value``, refused where it is NaN or infinite (YAML's ``.nan`` and ``.inf``): a range
    check such as ``value > 0`` is false for NaN both ways, so it would pass every one."""
    if not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value}")
    return value


def non_finite(value: Any, path: str = "", _seen: set[int] | None = None) -> str | None:
    """The path of the first NaN or infinite number anywhere in a YAML tree, or None. Each
    object is visited once: YAML aliases share objects, and may even make a cycle."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if not isinstance(value, dict | list):
        return None
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return None
    seen.add(id(value))
    items: Any = (((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
                  if isinstance(value, dict) else
                  ((f"{path}[{i}]", v) for i, v in enumerate(value)))
    for where, item in items:
        found = non_finite(item, where, seen)
        if found is not None:
            return found
    return None


def parse_fraction(value: Any, path: str) -> float:
    """Accept a number or a fraction written as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a number or a fraction like '8/255', got {quote(value)}")
    if isinstance(value, int | float):
        return finite(float(value), path)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*", value)
        try:
            if match:
                return float(match.group(1)) / float(match.group(2))
            return finite(float(value), path)
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(path, f"expected a number or a fraction like '8/255', got {quote(value)}")


def parse_share(value: Any, path: str) -> float:
    """A share: a number such as ``0.01``, or a percentage such as ``"1%"``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            pass
        raise ConfigError(path, f"expected a share like 0.01 or '1%', got {quote(value)}")
    return parse_fraction(value, path)


CONFIG_DIR: contextvars.ContextVar[Path] = contextvars.ContextVar("config_dir")


def parse_path(value: Any, path: str) -> str:
    """A file or folder that must exist, with ``$VARS`` expanded. A relative path is relative to
    the config file's folder, unless it starts with a variable: then to the working folder.

    Data and checkpoints are never found through paths built into the code; a config names them,
    typically through an environment variable such as ``$RAYPOISON_DATA_ROOT``.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a path, got {quote(value)}")
    expanded = os.path.expanduser(os.path.expandvars(value))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if unset:
        raise ConfigError(path, f"environment variable {unset[0]} is not set (in {quote(value)})")
    resolved = Path(expanded)
    if not resolved.is_absolute():
        # a path written in the file is relative to the file; one that comes from a variable
        # (``$RAYPOISON_DATA_ROOT/…`` with a relative value) is relative to where it was set
        base = Path.cwd() if value.lstrip().startswith("$") else CONFIG_DIR.get(Path.cwd())
        resolved = (base / resolved).resolve()
    if not resolved.exists():
        raise ConfigError(path, f"not found: {resolved}")
    return str(resolved)


def optional_path(value: Any, path: str) -> str | None:
    return None if value is None else parse_path(value, path)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {quote(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {quote(value)}")
        return value
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {quote(value)}")
        return tuple(convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {quote(value)}")
        return types.MappingProxyType(
            {str(k): convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
        )
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {quote(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {quote(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {quote(value)}")
        return finite(float(value), path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {quote(value)}")
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug, not user input


def build(cls: type, raw: Any, path: str) -> Any:
    """Build the frozen dataclass ``cls`` from a YAML mapping, checking keys, types and values.

    A field's ``metadata["parse"]`` may convert a raw value; a class's ``validate(path)`` method
    checks values once all fields are converted.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping, got {quote(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{prefix}{key}", f"unknown key (expected one of: {known})")
    values = {}
    for name, f in fields.items():
        key_path = f"{prefix}{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key_path, "required key is missing")
            continue
        parse = f.metadata.get("parse")
        if parse is not None:
            values[name] = parse(raw[name], key_path)
        else:
            values[name] = convert(raw[name], hints[name], key_path)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_plain(obj: Any) -> Any:
    """Config object -> JSON-able value (for hashing, manifests and rows)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def positive(path: str, name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, float):  # ints are finite, however long
        finite(value, f"{path}.{name}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"{path}.{name}", f"must be {bound}, got {value}")


def check_name(path: str, value: str) -> None:
    """A name that can become a partition folder (``scenario=<name>``): letters, digits and
    ``_ . -``, starting with a letter or digit, the whole string (no trailing newline), and at
    most :data:`MAX_NAME_BYTES` bytes."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(path, f"{quote(value)} is not a valid name (letters, digits, '_', '.', "
                                "'-', starting with a letter or digit)")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ConfigError(path, f"{quote(value)} is longer than {MAX_NAME_BYTES} bytes, too long "
                                "for a results folder")
