"""Distillation methods, discovered: every module of this folder that defines a Method subclass
is a method named like the module (and like its YAML in conf/method/). Modules without one
(losses, input noise, synthesis, pseudo-labels) are the parts methods share."""

from __future__ import annotations

import inspect

from omegaconf import DictConfig

from kdrun.checks import typed_settings
from kdrun.methods.base import Method, MethodSettings, Networks
from kdrun.registry import Registry, discover

METHODS: Registry[type[Method]] = Registry("method")


def _defined_methods(module) -> list[type[Method]]:
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Method) and obj is not Method
            and obj.__module__ == module.__name__]


for _module in discover(__name__, __path__):
    _classes = _defined_methods(_module)
    if len(_classes) > 1:
        raise TypeError(f"{_module.__name__} defines {len(_classes)} methods: one per module, "
                        "named like the module")
    if _classes:
        METHODS.add(_module.__name__.rsplit(".", 1)[1], _classes[0])


def method_settings(cfg: DictConfig) -> MethodSettings:
    """The method's settings, typed and checked (ConfigError: one line)."""
    name = cfg.get("name")
    cls = METHODS.get(name, key="method.name")
    return typed_settings(cfg, cls.Settings, "method", f"method {name}",
                          f"conf/method/{name}.yaml")


def build_method(cfg: DictConfig, networks: Networks) -> Method:
    return METHODS.get(cfg.name, key="method.name")(method_settings(cfg), networks)


__all__ = ["METHODS", "Method", "Networks", "build_method", "method_settings"]
