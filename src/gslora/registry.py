"""A strict name -> object registry: duplicate names and unknown names are errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gslora.errors import GSLoRAError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps registered names to objects (classes or factory functions).

    Args:
        kind: what the registry holds, used in error messages ("method", "model").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``; a second use of a name is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise GSLoRAError(f"{self.kind} {name!r} is already registered; pick another name")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise an error listing the valid names."""
        if not isinstance(name, str) or name not in self._entries:
            raise GSLoRAError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
