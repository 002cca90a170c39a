"""Distillation methods, one module each; importing this package registers them all."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

from kdrun.methods import (  # noqa: F401  (registration)
    afd,
    ddgsd,
    deepinversion,
    dml,
    fickle_teacher,
    gaussian_aug,
    kd,
    messy_collaboration,
    noisy_student,
    soft_randomization,
    vanilla,
)
from kdrun.methods.base import METHODS, Method


def build_method(cfg: DictConfig, student: nn.Module, teacher: nn.Module | None,
                 teacher_corruption: float = 0.0,
                 make_model: Callable[[str], nn.Module] | None = None) -> Method:
    """`make_model(arch)` builds the further networks a method trains (online peers), the
    same way the student was built; a method asks for it by taking `make_model`."""
    settings = {k: v for k, v in cfg.items() if k != "name"}
    cls = METHODS.get(cfg.name, key="method.name")
    if "make_model" in inspect.signature(cls.__init__).parameters:
        settings["make_model"] = make_model
    if not cls.needs_teacher:
        return cls(student=student, **settings)
    method = cls(student=student, teacher=teacher, **settings)
    method.teacher_corruption = teacher_corruption
    return method


__all__ = ["METHODS", "Method", "build_method"]
