"""ShuffleNet (Zhang et al., arXiv 1707.01083) in the CIFAR form of the KD benchmarks (Tian et
al., CRD, arXiv 1910.10699; HobbitLong/RepDistiller models/ShuffleNetv1.py): a 1x1 stem conv
to 24 channels and no max-pool, then three stages of 4/8/4 units with 3 groups (outputs
240/480/960), each opening with a stride-2 unit. As in RepDistiller, and unlike the paper's
Fig. 2, a ReLU follows the depthwise conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.zoo.staged import StagedNet, drop_path_rates, residual_drop

STEM_WIDTH = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleaves the channels of `groups` groups, so that the next grouped conv sees every
    group's output (the paper's Fig. 1)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """1x1 group conv, channel shuffle, 3x3 depthwise conv, 1x1 group conv (the paper's
    Fig. 2b, c). Stride 1 adds the identity; stride 2 concatenates the input, 3x3
    average-pooled, after the branch's `cout - cin` channels. The first unit's 1x1 conv is
    not grouped: 24 input channels are too few (the paper's Sec. 3.3)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, in_groups: int,
                 drop_path: float = 0.0):
        super().__init__()
        branch = cout - cin if stride == 2 else cout
        mid = branch // 4
        self.in_groups = in_groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=in_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        # a concatenating unit has no identity to fall back on: never dropped
        self.drop_path = residual_drop(drop_path if stride == 1 else 0.0)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output before its final ReLU (RepDistiller's preact)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(channel_shuffle(out, self.in_groups))))
        out = self.bn3(self.conv3(out))
        if self.pool is not None:
            return torch.cat([out, self.pool(x)], 1)
        return self.drop_path(out) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_activation(x))


def shufflenetv1(num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> StagedNet:
    """RepDistiller's ShuffleV1: g = 3, stage outputs 240/480/960, 4/8/4 units."""
    widths, units, groups = [240, 480, 960], [4, 8, 4], 3
    stem = nn.Sequential(nn.Conv2d(3, STEM_WIDTH, 1, bias=False), nn.BatchNorm2d(STEM_WIDTH),
                         nn.ReLU(inplace=True))
    rates = iter(drop_path_rates(drop_path_rate, sum(units)))
    stages, cin = [], STEM_WIDTH
    for width, n in zip(widths, units):
        stage = []
        for i in range(n):
            stage.append(ShuffleUnit(cin, width, 2 if i == 0 else 1, groups,
                                     1 if cin == STEM_WIDTH else groups, next(rates)))
            cin = width
        stages.append(nn.Sequential(*stage))
    return StagedNet(stem, stages, widths, [2, 4, 8], nn.Identity(), num_classes, drop_rate)


ARCHITECTURES = {"shufflenetv1": shufflenetv1}
