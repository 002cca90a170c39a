"""ResNets for 32x32 inputs: He et al.'s CIFAR family (depth 6n+2, arXiv 1512.03385), the
4x-wide variants used in the KD literature (resnet8x4, resnet32x4; Tian et al., CRD), and
ResNet-18/34 with a 3x3 stem and no max-pool (the DeepInversion CIFAR setting)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.zoo.staged import StagedNet, conv3x3, drop_path_rates, residual_drop


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = residual_drop(drop_path)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU (what FitNet's and ReviewKD's references
        distil)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.drop_path(out) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_activation(x))


def resnet(stem_width: int, widths: list[int], blocks: list[int], strides: list[int],
           num_classes: int, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> StagedNet:
    stem = nn.Sequential(conv3x3(3, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
    stages, cin, reduction, reductions = [], stem_width, 1, []
    rates = iter(drop_path_rates(drop_path_rate, sum(blocks)))
    for width, n, stride in zip(widths, blocks, strides):
        stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else width, width,
                                                 stride if i == 0 else 1, next(rates))
                                      for i in range(n)]))
        cin, reduction = width, reduction * stride
        reductions.append(reduction)
    return StagedNet(stem, stages, widths, reductions, nn.Identity(), num_classes, drop_rate)


def cifar_resnet(depth: int, widths: list[int], num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
    """`widths` = [stem, stage1, stage2, stage3]."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return resnet(widths[0], widths[1:], [n] * 3, [1, 2, 2], num_classes, drop_rate,
                  drop_path_rate)


def imagenet_style_resnet(blocks: list[int], num_classes: int, drop_rate: float = 0.0,
                          drop_path_rate: float = 0.0):
    return resnet(64, [64, 128, 256, 512], blocks, [1, 2, 2, 2], num_classes, drop_rate,
                  drop_path_rate)


ARCHITECTURES = {
    **{f"resnet{depth}": partial(cifar_resnet, depth, [16, 16, 32, 64])
       for depth in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{depth}x4": partial(cifar_resnet, depth, [32, 64, 128, 256]) for depth in (8, 32)},
    "resnet18": partial(imagenet_style_resnet, [2, 2, 2, 2]),
    "resnet34": partial(imagenet_style_resnet, [3, 4, 6, 3]),
}
