"""Name -> builder tables. The registry key, the YAML file name and the config's `name` are one
string, so a test parametrised over a registry covers every entry added later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from kdrun.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str, key: str = "name") -> T:
        if name not in self._entries:
            raise ConfigError(f"{key}={name} is not a known {self.kind}: "
                              f"choose one of {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
