"""Wide residual networks for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016, arXiv 1605.07146):
WRN-d-k has (d-4)/6 pre-activation blocks per stage and widths 16k, 32k, 64k. A block that
changes the shape projects its shortcut from the activated input, BN-ReLU(x), as the authors'
code and RepDistiller's do; `wrn_d_k_input_shortcut` projects the raw input x instead, as
torchdistill's WRN (after meliketoy/wide-resnet.pytorch) does, so its published weights give
their accuracy."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.zoo.staged import (
    NormAct,
    StagedNet,
    batch_norm_without_update,
    conv3x3,
    drop_path_rates,
    residual_drop,
)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_path: float = 0.0,
                 shortcut_reads_input: bool = False):
        super().__init__()
        self.shortcut_reads_input = shortcut_reads_input
        self.drop_path = residual_drop(drop_path)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def activation_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the block's first ReLU reads, bn1(x), for the previous stage's pre-activation
        features (StagedNet.stage_with_pre_activation)."""
        return batch_norm_without_update(self.bn1, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut(x if self.shortcut_reads_input else o)
        out = self.conv1(o)
        out = self.conv2(F.relu(self.bn2(out)))
        return self.drop_path(out) + skip


def wide_resnet(depth: int, widen: int, num_classes: int, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0, shortcut_reads_input: bool = False) -> StagedNet:
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    stages, cin = [], 16
    rates = iter(drop_path_rates(drop_path_rate, 3 * n))
    for width, stride in zip(widths, (1, 2, 2)):
        blocks = [PreActBlock(cin if i == 0 else width, width, stride if i == 0 else 1,
                              next(rates), shortcut_reads_input) for i in range(n)]
        stages.append(nn.Sequential(*blocks))
        cin = width
    head_norm = NormAct(widths[-1])
    return StagedNet(conv3x3(3, 16), stages, widths, [1, 2, 4], head_norm, num_classes, drop_rate)


ARCHITECTURES = {f"wrn_{depth}_{widen}": partial(wide_resnet, depth, widen)
                 for depth, widen in [(16, 1), (16, 2), (16, 4), (16, 8), (28, 2), (28, 4),
                                      (28, 10), (40, 1), (40, 2), (40, 4)]}
ARCHITECTURES.update({f"wrn_{depth}_{widen}_input_shortcut":
                      partial(wide_resnet, depth, widen, shortcut_reads_input=True)
                      for depth, widen in [(16, 8), (28, 10), (40, 4)]})
