"""Distillation methods, discovered: every module of this folder that defines a Method subclass
is a method named like the module (and like its YAML in conf/method/). Modules without one
(losses, input noise, synthesis, pseudo-labels) are the parts methods share."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.checks import typed_settings
from kdrun.methods.base import Method, MethodSettings, Networks
from kdrun.registry import Registry, register_subclasses

METHODS: Registry[type[Method]] = Registry("method")


register_subclasses(METHODS, __name__, __path__, Method)


def method_settings(cfg: DictConfig) -> MethodSettings:
    """The method's settings, typed and checked (ConfigError: one line)."""
    name = cfg.get("name")
    cls = METHODS.get(name, key="method.name")
    return typed_settings(cfg, cls.Settings, "method", f"method {name}",
                          f"conf/method/{name}.yaml")


def build_method(cfg: DictConfig, networks: Networks) -> Method:
    return METHODS.get(cfg.name, key="method.name")(method_settings(cfg), networks)


__all__ = ["METHODS", "Method", "Networks", "build_method", "method_settings"]
