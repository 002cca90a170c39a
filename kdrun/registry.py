"""Name -> entry tables filled by discovery: every module of a folder is imported and what it
defines is registered, so adding a method, a data set or a model touches no list elsewhere. The
registry key, the YAML file name and the config's `name` are one string, so a test
parametrised over a registry covers every entry added later."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import Generic, TypeVar

from kdrun.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is defined twice")
        self._entries[name] = entry

    def get(self, name: str, key: str = "name") -> T:
        if name not in self._entries:
            raise ConfigError(f"{key}={name} is not a known {self.kind}: "
                              f"choose one of {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


def register_subclasses(registry: Registry, package: str, path: Iterable[str],
                        base: type) -> None:
    """Each module of a package folder that defines a subclass of `base` adds it to
    `registry` under the module's name; a module with two is an error (one per module, named
    like it)."""
    for module in discover(package, path):
        classes = [obj for obj in vars(module).values()
                   if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
                   and obj.__module__ == module.__name__]
        if len(classes) > 1:
            raise TypeError(f"{module.__name__} defines {len(classes)} {registry.kind}s: one "
                            "per module, named like the module")
        if classes:
            registry.add(module.__name__.rsplit(".", 1)[1], classes[0])


def discover(package: str, path: Iterable[str]) -> list[ModuleType]:
    """Every module of a package folder, imported, in name order; modules whose name starts
    with an underscore are helpers and are left out."""
    return [importlib.import_module(f"{package}.{info.name}")
            for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name)
            if not info.name.startswith("_")]
