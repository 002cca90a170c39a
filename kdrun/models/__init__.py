"""Models: the zoo's architectures (kdrun/models/zoo/, discovered) and any timm model as
`timm/<name>`. `build_model` wraps the network with its normalisation (see Classifier). timm
is imported only for a timm model: importing it takes seconds that `kdrun --help` should not
wait for."""

from __future__ import annotations

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.classifier import Classifier
from kdrun.models.zoo import MODELS

TIMM_PREFIX = "timm/"


def check_arch(arch: str, key: str) -> None:
    if arch.startswith(TIMM_PREFIX):
        import timm

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
        import timm

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


__all__ = ["MODELS", "TIMM_PREFIX", "Classifier", "build_model", "build_network", "check_arch"]
