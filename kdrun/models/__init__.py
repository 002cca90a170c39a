"""The model zoo: `MODELS` maps an architecture name to a builder; `timm/<name>` reaches any
timm model. `build_model` wraps the network with its normalisation (see Classifier)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import timm
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.classifier import Classifier
from kdrun.models.resnet_cifar import cifar_resnet, imagenet_style_resnet
from kdrun.models.wrn import wide_resnet
from kdrun.registry import Registry

ModelBuilder = Callable[..., nn.Module]  # (num_classes, drop_rate) -> network
MODELS: Registry[ModelBuilder] = Registry("architecture")
TIMM_PREFIX = "timm/"

for _depth, _widen in [(16, 1), (16, 2), (16, 4), (16, 8), (28, 2), (28, 4), (28, 10),
                       (40, 1), (40, 2), (40, 4)]:
    MODELS.register(f"wrn_{_depth}_{_widen}")(partial(wide_resnet, _depth, _widen))
for _depth in (8, 14, 20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}")(partial(cifar_resnet, _depth, [16, 16, 32, 64]))
for _depth in (8, 32):
    MODELS.register(f"resnet{_depth}x4")(partial(cifar_resnet, _depth, [32, 64, 128, 256]))
MODELS.register("resnet18")(partial(imagenet_style_resnet, [2, 2, 2, 2]))
MODELS.register("resnet34")(partial(imagenet_style_resnet, [3, 4, 6, 3]))


def check_arch(arch: str, key: str) -> None:
    if arch.startswith(TIMM_PREFIX):
        if not timm.is_model(arch[len(TIMM_PREFIX):]):
            raise ConfigError(f"{key}={arch} is not a timm model: list them with "
                              "python -c 'import timm; print(timm.list_models())'")
        return
    MODELS.get(arch, key=key)


def build_network(arch: str, num_classes: int, drop_rate: float = 0.0,
                  pretrained: bool = False, drop_path_rate: float = 0.0) -> nn.Module:
    """`drop_rate`: dropout before the classifier; `drop_path_rate`: stochastic depth of the
    last residual block, decaying linearly towards the first."""
    if arch.startswith(TIMM_PREFIX):
        return timm.create_model(arch[len(TIMM_PREFIX):], pretrained=pretrained,
                                 num_classes=num_classes, drop_rate=drop_rate,
                                 drop_path_rate=drop_path_rate)
    return MODELS.get(arch)(num_classes=num_classes, drop_rate=drop_rate,
                            drop_path_rate=drop_path_rate)


def build_model(arch: str, num_classes: int, mean: list[float], std: list[float],
                drop_rate: float = 0.0, pretrained: bool = False,
                drop_path_rate: float = 0.0) -> Classifier:
    net = build_network(arch, num_classes, drop_rate, pretrained, drop_path_rate)
    return Classifier(net, arch, num_classes, list(mean), list(std))


__all__ = ["MODELS", "Classifier", "build_model", "check_arch"]
