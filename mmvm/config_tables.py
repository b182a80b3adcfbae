"""Reading a config's TOML tables strictly: ``section.key=value`` overrides merged
into the raw tables, and each table built into its frozen dataclass with unknown keys
(and the closest valid one), values of the wrong type and values where a table
belongs refused as :class:`ConfigError` naming the key and the source.
:mod:`mmvm.config` holds the dataclasses and re-exports :class:`ConfigError`."""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the source."""


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except RecursionError:  # (tomllib's, on arrays nested thousands deep)
        raise ConfigError(f"override {item[:60]!r}...: its value is nested too deeply "
                          f"to be a config value") from None
    except tomllib.TOMLDecodeError:
        if re.search(r"\s[A-Za-z_][\w.]*\.[\w]+\s*=", value):
            raise ConfigError(
                f"override {item!r} holds two or more: separate them with ';' in a run "
                f"config's set (set='train.epochs=5; train.num_threads=1'), or give "
                f"--set once for each") from None
        parsed = value
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p!r} is a value, not a section")
    node[parts[-1]] = parsed


def reject_unknown_sections(raw: dict, sections: dict[str, type], source: str) -> None:
    """A top-level key that is no section; when it is (close to) a key of one, say
    which: ``epochs`` -> ``train.epochs``."""
    unknown = []
    for key in raw:
        if key in sections:
            continue
        near = difflib.get_close_matches(key, sorted(sections), n=1)
        owners = [f"{name}.{field}" for name, cls in sections.items()
                  for field in difflib.get_close_matches(
                      key, [f.name for f in dataclasses.fields(cls)], n=1)]
        guess = near + owners if isinstance(raw[key], dict) else owners + near
        unknown.append(f"{key!r}" + (f"; did you mean '{guess[0]}'?" if guess else ""))
    if unknown:
        raise ConfigError(f"{source}: {_keys(unknown)} (keys are section.key; sections: "
                          f"{', '.join(sorted(sections))})")


def _keys(unknown: list[str]) -> str:
    """"unknown key 'x'; did you mean ..." or, several at once, each on its own."""
    if len(unknown) == 1:
        return f"unknown key {unknown[0]}"
    return f"{len(unknown)} unknown keys: " + " | ".join(unknown)


def _reject_unknown(raw: dict, valid: set[str], prefix: str, source: str,
                    named: set[str] = frozenset()) -> None:
    """``named``: keys read apart (``model.modalities``), valid but not in ``raw``
    here; a near miss of one is suggested too (``[model.modalites.rat2]``)."""
    unknown = []
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid | named), n=1)
            unknown.append(f"{prefix + key!r}" + (f"; did you mean '{prefix}{close[0]}'?"
                                                  if close else ""))
    if unknown:
        raise ConfigError(f"{source}: {_keys(unknown)} (valid: "
                          f"{', '.join(sorted(valid | named))})")


def check_table(raw: Any, where: str, source: str) -> dict:
    """``raw`` when it is a table; else :class:`ConfigError`: ``[model] must be a
    table`` (``--set model=1``, a section given as a value; ``where`` "" is the whole
    config)."""
    if not isinstance(raw, dict):
        shown = repr(raw)
        shown = shown if len(shown) <= 80 else f"{shown[:80]}..."
        what = f"[{where}]" if where else "the config"
        raise ConfigError(f"{source}: {what} must be a table (key = value pairs), got "
                          f"{type(raw).__name__} {shown}")
    return raw


def build_table(cls, raw: Any, where: str, source: str, extra: dict | None = None):
    check_table(raw, where, source)
    extra = extra or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - set(extra)
    _reject_unknown(raw, fields, f"{where}.", source, set(extra))
    values = {key: coerce(value, hints[key], f"{where}.{key}", source)
              for key, value in raw.items()}
    try:
        return cls(**values, **extra)
    except TypeError as err:
        raise ConfigError(f"{source}: [{where}]: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
            what = {int: "integers", str: "strings"}[item]
            raise ConfigError(f"{source}: {key} must be a list of {what}, got {value!r}")
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (
            hint is not bool and isinstance(value, bool))):
        raise ConfigError(f"{source}: {key} must be {hint.__name__}, got "
                          f"{type(value).__name__} {value!r}")
    return value
