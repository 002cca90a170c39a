"""VGG with BatchNorm for 32x32 inputs (Simonyan & Zisserman, arXiv 1409.1556), in the CIFAR
form of the KD benchmarks (Tian et al., CRD, arXiv 1910.10699): five groups of 3x3 conv-BN-ReLU,
2x2 max-pooling between them, global average pooling and one linear layer. vgg8 has one conv
per group; vgg11/13/16/19 follow the paper's configurations A, B, D, E."""

from __future__ import annotations

from functools import partial

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.zoo.staged import StagedNet, conv3x3

WIDTHS = [64, 128, 256, 512, 512]
CONVS_PER_GROUP = {8: [1, 1, 1, 1, 1], 11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2],
                   16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}


def vgg(depth: int, num_classes: int, drop_rate: float = 0.0,
        drop_path_rate: float = 0.0) -> StagedNet:
    if drop_path_rate:
        raise ConfigError(f"vgg{depth} has no residual blocks, so no stochastic depth: use a "
                          "residual network or no drop path (method.survival=1)")
    stages, cin = [], 3
    for i, (width, convs) in enumerate(zip(WIDTHS, CONVS_PER_GROUP[depth])):
        layers = [nn.MaxPool2d(2)] if i > 0 else []
        for _ in range(convs):
            layers += [conv3x3(cin, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        stages.append(nn.Sequential(*layers))
    return StagedNet(nn.Identity(), stages, WIDTHS, [1, 2, 4, 8, 16], nn.Identity(),
                     num_classes, drop_rate)


ARCHITECTURES = {f"vgg{depth}": partial(vgg, depth) for depth in CONVS_PER_GROUP}
