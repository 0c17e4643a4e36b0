"""Strict updates of dataclass configs: YAML/JSON files, `key=value` overrides, unknown keys named as errors.

Every component owns one dataclass config; `prefmine.train_config` gathers the training ones into one tree with
one preset table and loads it with these helpers. An unknown key anywhere is an error that names it, so a typo
never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


def _coerce(value: Any, current: Any, key: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ConfigError(f"config key {key!r}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from e
    if isinstance(current, float):
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from e
    if isinstance(current, (list, tuple)) and isinstance(value, str):  # YAML flow text: [a, b] or [0.1, 0.05]
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"config key {key!r}: expected a list, e.g. [a, b], got {value!r}") from e
        if not isinstance(parsed, list):
            raise ConfigError(f"config key {key!r}: expected a list, e.g. [a, b], got {value!r}")
        return type(current)(parsed)
    if isinstance(current, tuple) and isinstance(value, list):  # YAML has no tuples: keep the field's type
        return tuple(value)
    if isinstance(current, dict):  # a mapping key: a YAML/JSON mapping, or its text in a --set override
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, e.g. {{name: 1}}, got {value!r}")
        return dict(parsed)
    return value


def resource_map(value: dict, key: str) -> dict[str, float]:
    """Ray custom resources (``{name: amount}``) as a config key gives them, checked: each name a non-empty string
    other than CPU/GPU (their own keys set those), each amount a number >= 0. ConfigError naming `key` otherwise."""
    out = {}
    for name, amount in (value or {}).items():
        if not isinstance(name, str) or not name or name in ("CPU", "GPU"):
            raise ConfigError(f"config key {key!r}: {name!r} is not a custom resource name (CPU and GPU have "
                              "their own keys)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"config key {key!r}: resource {name!r} needs an amount >= 0, got {amount!r}")
        out[name] = float(amount)
    return out


def apply(cfg: T, updates: dict[str, Any], where: str = "config") -> T:
    """Return a copy of `cfg` with `updates` applied; unknown keys raise ConfigError."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(updates) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {type(cfg).__name__}; known keys: {sorted(names)}"
        )
    coerced = {k: _coerce(v, getattr(cfg, k), k) for k, v in updates.items()}
    return dataclasses.replace(cfg, **coerced)


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
