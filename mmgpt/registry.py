"""The one registration and look-up helper behind every name-keyed registry (encoders, fusions, dataset formats)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmgpt.config import ConfigError


def registrar(registry: dict, kind: str, name_attribute: str = "") -> Callable[[str], Callable[[Any], Any]]:
    """A `@register(name)` decorator that adds to `registry` and refuses a name used twice.

    With `name_attribute`, the registered object also gets its name as that attribute (for its messages).
    """

    def register(name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in registry:
                raise ValueError(f"{kind} '{name}' is registered twice")
            registry[name] = obj
            if name_attribute:
                setattr(obj, name_attribute, name)
            return obj

        return add

    return register


def lookup(registry: dict, name: str, key: str) -> Any:
    """registry[name], or a ConfigError naming the config key and the available names."""
    if name not in registry:
        raise ConfigError(f"unknown {key} '{name}'; available: {', '.join(sorted(registry))}")
    return registry[name]
