"""ShuffleNetV2 (Ma et al., arXiv 1807.11164) in the CIFAR form of the KD benchmarks (Tian et
al., CRD, arXiv 1910.10699; HobbitLong/RepDistiller models/ShuffleNetv2.py): a 1x1 stem conv to
24 channels and no max-pool, three stages (a stride-2 unit, then 3/7/3 units; outputs
116/232/464 at net size 1) and a 1x1 conv to 1024 before the pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.zoo.conv_head import ConvHeadNet
from kdrun.models.zoo.shufflenetv1 import channel_shuffle


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """A conv and its BatchNorm; a 3x3 one is depthwise."""
    groups = cin if kernel == 3 else 1
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class ShuffleUnit(nn.Module):
    """Channel split: half the channels pass untouched, the other half go through 1x1 conv,
    3x3 depthwise conv (no ReLU after it), 1x1 conv; both are concatenated and shuffled (the
    paper's Fig. 3c). Layer names as RepDistiller's BasicBlock."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = conv_bn(half, half, 1)
        self.conv2, self.bn2 = conv_bn(half, half, 3)
        self.conv3, self.bn3 = conv_bn(half, half, 1)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's output with the branch's final ReLU left out, in the order of the
        output's channels: RepDistiller's preact is the same tensor before the shuffle."""
        kept, x = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return channel_shuffle(torch.cat([kept, out], 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the kept half is a ReLU output (every unit's input is), so this ReLU is the branch's
        return F.relu(self.pre_activation(x))


class DownUnit(nn.Module):
    """The spatial down-sampling unit (the paper's Fig. 3d): no split; a 3x3 depthwise
    stride-2 conv then a 1x1 conv on the left, the right branch of ShuffleUnit with stride 2,
    each giving half the output channels, concatenated and shuffled. Layer names as
    RepDistiller's DownBlock."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = conv_bn(cin, cin, 3, 2)
        self.conv2, self.bn2 = conv_bn(cin, mid, 1)
        self.conv3, self.bn3 = conv_bn(cin, mid, 1)
        self.conv4, self.bn4 = conv_bn(mid, mid, 3, 2)
        self.conv5, self.bn5 = conv_bn(mid, mid, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


def shufflenetv2(num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> ConvHeadNet:
    """RepDistiller's ShuffleV2 (net size 1)."""
    if drop_path_rate:
        raise ConfigError("shufflenetv2 has no residual blocks (its units concatenate, they do "
                          "not add), so no stochastic depth: use a residual network or no drop "
                          "path (method.survival=1)")
    widths, units = [116, 232, 464], [3, 7, 3]
    stem = nn.Sequential(*conv_bn(3, 24, 1), nn.ReLU(inplace=True))
    stages, cin = [], 24
    for width, n in zip(widths, units):
        stages.append(nn.Sequential(DownUnit(cin, width), *[ShuffleUnit(width) for _ in range(n)]))
        cin = width
    return ConvHeadNet(stem, stages, widths, [2, 4, 8], 1024, num_classes, drop_rate)


ARCHITECTURES = {"shufflenetv2": shufflenetv2}
