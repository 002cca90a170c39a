"""MobileNetV2 (Sandler et al., arXiv 1801.04381) in the CIFAR form of the KD benchmarks
(Tian et al., CRD, arXiv 1910.10699; HobbitLong/RepDistiller models/mobilenetv2.py, from Route
Constrained Optimization). `mobilenetv2` is RepDistiller's mobile_half: expansion 6, width 0.5
with channels rounded down (int(c * width), not to multiples of 8), a stride-2 stem, an
expansion conv even in the first (t=1) block, and the 1280-wide 1x1 conv before the pooling."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdrun.models.zoo.conv_head import ConvHeadNet
from kdrun.models.zoo.staged import drop_path_rates, residual_drop

# The paper's Table 2 rows (channels, blocks, stride of the first block), grouped into the
# stages RepDistiller's is_feat reports (f1..f4: the ends of blocks[1], [2], [4], [6]).
STAGES = [[(16, 1, 1), (24, 2, 1)], [(32, 3, 2)], [(64, 4, 2), (96, 3, 1)],
          [(160, 3, 2), (320, 1, 1)]]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise conv, linear 1x1 projection (no ReLU: the paper's
    linear bottleneck, so stage outputs have no pre-activation of their own); the identity is
    added where the shape is kept. `conv` is named as in RepDistiller."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, drop_path: float = 0.0):
        super().__init__()
        mid = cin * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout
        # a block that changes the shape has no identity to fall back on: never dropped
        self.drop_path = residual_drop(drop_path if self.residual else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + self.drop_path(out) if self.residual else out


def mobilenetv2(expansion: int, width: float, num_classes: int, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0) -> ConvHeadNet:
    """RepDistiller's mobilenetv2_T_w(T=expansion, W=width)."""
    cin = int(32 * width)
    stem = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True))
    rates = iter(drop_path_rates(drop_path_rate, sum(n for rows in STAGES for _, n, _ in rows)))
    stages, channels, reductions, reduction = [], [], [], 2  # the stem has stride 2
    for rows in STAGES:
        blocks = []
        for c, n, stride in rows:
            cout = int(c * width)
            for i in range(n):
                t = expansion if stages or blocks else 1  # Table 2's first row has t = 1
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, t,
                                               next(rates)))
                cin = cout
            reduction *= stride
        stages.append(nn.Sequential(*blocks))
        channels.append(cin)
        reductions.append(reduction)
    head = max(1280, int(1280 * width))  # the paper keeps 1280 for widths below 1
    # a stage ends in a linear projection that no ReLU follows: its pre-activation output is
    # its output (RepDistiller's MobileNetV2 returns the same features with preact=True)
    return ConvHeadNet(stem, stages, channels, reductions, head, num_classes, drop_rate)


ARCHITECTURES = {"mobilenetv2": partial(mobilenetv2, 6, 0.5)}
