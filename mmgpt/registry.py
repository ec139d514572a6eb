"""The one registration helper behind every name-keyed registry (encoders, transforms, dataset formats)."""
from __future__ import annotations

from typing import Any, Callable


def registrar(registry: dict, kind: str) -> Callable[[str], Callable[[Any], Any]]:
    """A `@register(name)` decorator that adds to `registry` and refuses a name used twice."""

    def register(name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in registry:
                raise ValueError(f"{kind} '{name}' is registered twice")
            registry[name] = obj
            return obj

        return add

    return register
