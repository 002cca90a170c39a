"""Distillation methods, one module each; importing this package registers them all."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from kdrun.methods import kd, vanilla  # noqa: F401  (registration)
from kdrun.methods.base import METHODS, Method


def build_method(cfg: DictConfig, student: nn.Module, teacher: nn.Module | None) -> Method:
    settings = {k: v for k, v in cfg.items() if k != "name"}
    cls = METHODS.get(cfg.name, key="method.name")
    if cls.needs_teacher:
        return cls(student=student, teacher=teacher, **settings)
    return cls(student=student, **settings)


__all__ = ["METHODS", "Method", "build_method"]
