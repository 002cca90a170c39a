"""VGG with BatchNorm for 32x32 inputs (Simonyan & Zisserman, arXiv 1409.1556), in the CIFAR
form of the KD benchmarks (Tian et al., CRD, arXiv 1910.10699; HobbitLong/RepDistiller
models/vgg.py): five groups of 3x3 conv-BN-ReLU, 2x2 max-pooling before the second, third and
fourth, none before the fifth (RepDistiller pools there only for 64-pixel inputs), global
average pooling and one linear layer. The first group is the stem and the other four the
stages, as RepDistiller's feature list counts them (f0, then f1..f4). vgg8 has one conv per
group; vgg11/13/16/19 follow the paper's configurations A, B, D, E."""

from __future__ import annotations

from functools import partial

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.zoo.staged import StagedNet

WIDTHS = [64, 128, 256, 512, 512]
CONVS_PER_GROUP = {8: [1, 1, 1, 1, 1], 11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2],
                   16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}
POOLED_BEFORE = [False, True, True, True, False]  # a group's input max-pooled 2x2
# 2: the form above; 1 pooled before the fifth group too and had no conv biases. Part of the
# teacher cache's key, so a cached teacher of the first form is never loaded into this one.
REVISION = 2


def vgg(depth: int, num_classes: int, drop_rate: float = 0.0,
        drop_path_rate: float = 0.0) -> StagedNet:
    if drop_path_rate:
        raise ConfigError(f"vgg{depth} has no residual blocks, so no stochastic depth: use a "
                          "residual network or no drop path (method.survival=1)")
    groups, cin = [], 3
    for width, convs, pooled in zip(WIDTHS, CONVS_PER_GROUP[depth], POOLED_BEFORE):
        layers = [nn.MaxPool2d(2)] if pooled else []
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1),  # with a bias, as RepDistiller's
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        groups.append(nn.Sequential(*layers))
    return StagedNet(groups[0], groups[1:], WIDTHS[1:], [2, 4, 8, 8], nn.Identity(),
                     num_classes, drop_rate)


def revised(builder: partial) -> partial:
    builder.revision = REVISION
    return builder


ARCHITECTURES = {f"vgg{depth}": revised(partial(vgg, depth)) for depth in CONVS_PER_GROUP}
