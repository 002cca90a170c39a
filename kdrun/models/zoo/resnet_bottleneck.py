"""ResNet-50 for 32x32 inputs (He et al., arXiv 1512.03385), the KD benchmarks' largest CIFAR
teacher (Tian et al., CRD, arXiv 1910.10699; HobbitLong/RepDistiller models/resnetv2.py
ResNet50): the ImageNet stages of bottleneck blocks behind a 3x3 stride-1 stem with no
max-pool, like resnet18/34 in resnet_cifar.py."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.zoo.staged import StagedNet, conv3x3, drop_path_rates, residual_drop


class Bottleneck(nn.Module):
    """1x1 reduction, 3x3 conv (which carries the stride, as in RepDistiller and
    torchvision), 1x1 expansion to 4x; a 1x1 projection shortcut where the shape changes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, drop_path: float = 0.0):
        super().__init__()
        cout = planes * self.expansion
        self.drop_path = residual_drop(drop_path)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU (RepDistiller's preact)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.drop_path(out) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_activation(x))


def bottleneck_resnet(blocks: list[int], num_classes: int, drop_rate: float = 0.0,
                      drop_path_rate: float = 0.0) -> StagedNet:
    stem = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    rates = iter(drop_path_rates(drop_path_rate, sum(blocks)))
    stages, cin = [], 64
    for planes, n, stride in zip([64, 128, 256, 512], blocks, [1, 2, 2, 2]):
        stage = []
        for i in range(n):
            stage.append(Bottleneck(cin, planes, stride if i == 0 else 1, next(rates)))
            cin = planes * Bottleneck.expansion
        stages.append(nn.Sequential(*stage))
    return StagedNet(stem, stages, [256, 512, 1024, 2048], [1, 2, 4, 8], nn.Identity(),
                     num_classes, drop_rate)


ARCHITECTURES = {"resnet50": partial(bottleneck_resnet, [3, 4, 6, 3])}
