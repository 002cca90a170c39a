"""kdrun's own architectures, discovered: every module here that defines `ARCHITECTURES`
(name -> builder taking num_classes, drop_rate, drop_path_rate) adds its entries. A new model
is one module in this folder; `teacher=NAME` and `student=NAME` then exist by themselves."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kdrun.registry import Registry, discover

ModelBuilder = Callable[..., nn.Module]  # (num_classes, drop_rate, drop_path_rate) -> network
MODELS: Registry[ModelBuilder] = Registry("architecture")

for _module in discover(__name__, __path__):
    for _name, _builder in getattr(_module, "ARCHITECTURES", {}).items():
        MODELS.add(_name, _builder)
