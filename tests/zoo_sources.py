"""The published weight files' own networks, written from their sources' model code (module
names, nesting and forward order as there), so the tests can build a state dict in each
source's exact layout and compare a converted kdrun network's outputs with the source's:
- ResNet: RepDistiller models/resnet.py, chenyaofo pytorch_cifar_models/resnet.py and
  torchdistill ResNet4Cifar share conv1/bn1/layer<k>.<i>/downsample/fc; RepDistiller's
  resnetv2.py ResNet50 names its shortcut `shortcut` and its head `linear`.
- WRN: RepDistiller models/wrn.py (block<k>.layer.<i>, convShortcut on the activated input)
  and torchdistill wide_resnet.py (layer<k>.<i>, shortcut.0 on the raw input).
- VGG: RepDistiller models/vgg.py (block0..4 conv-BN(-ReLU), pools between, classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin, cout, stride=1, bias=False):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) (widths [stem, 3 stages]) or, bottleneck=True, RepDistiller's
    ResNet50 (blocks [3, 4, 6, 3], head `linear`)."""

    def __init__(self, num_classes, depth=20, widths=(16, 16, 32, 64), bottleneck=False):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0])
        cin = widths[0]
        if bottleneck:
            for k, (planes, n, stride) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3],
                                                        [1, 2, 2, 2]), 1):
                blocks = []
                for i in range(n):
                    blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                    cin = 4 * planes
                setattr(self, f"layer{k}", nn.Sequential(*blocks))
            self.linear = nn.Linear(cin, num_classes)
            return
        n = (depth - 2) // 6
        for k, (width, stride) in enumerate(zip(widths[1:], [1, 2, 2]), 1):
            blocks = [BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                      for i in range(n)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            cin = width
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for k in range(1, 5):
            if hasattr(self, f"layer{k}"):
                x = getattr(self, f"layer{k}")(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x) if hasattr(self, "linear") else self.fc(x)


class WRNBlock(nn.Module):
    """RepDistiller's (convShortcut on the activated input, `False` when absent) or, with
    sequential=True, torchdistill's (shortcut.0 on the raw input, an empty Sequential)."""

    def __init__(self, cin, cout, stride, sequential):
        super().__init__()
        self.sequential = sequential
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        projects = stride != 1 or cin != cout
        conv = nn.Conv2d(cin, cout, 1, stride, bias=False) if projects else None
        if sequential:
            self.shortcut = nn.Sequential(conv) if projects else nn.Sequential()
        else:
            self.convShortcut = conv if projects else False

    def forward(self, x):
        o = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        if self.sequential:
            return out + self.shortcut(x)
        return out + (self.convShortcut(o) if self.convShortcut is not False else x)


class WRN(nn.Module):
    def __init__(self, num_classes, depth, widen, sequential=False):
        super().__init__()
        n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(3, 16)
        cin = 16
        for k, (width, stride) in enumerate(zip(widths, [1, 2, 2]), 1):
            blocks = nn.Sequential(*[WRNBlock(cin if i == 0 else width, width,
                                              stride if i == 0 else 1, sequential)
                                     for i in range(n)])
            if sequential:
                setattr(self, f"layer{k}", blocks)
            else:
                group = nn.Module()
                group.layer = blocks
                setattr(self, f"block{k}", group)
            cin = width
        self.bn1, self.fc = nn.BatchNorm2d(cin), nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for k in range(1, 4):
            stage = getattr(self, f"layer{k}", None) or getattr(self, f"block{k}").layer
            x = stage(x)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(x)), 1).flatten(1))


VGG_CONVS = {8: [1, 1, 1, 1, 1], 13: [2, 2, 2, 2, 2]}


class VGG(nn.Module):
    def __init__(self, num_classes, depth=13):
        super().__init__()
        cin = 3
        for k, (width, convs) in enumerate(zip([64, 128, 256, 512, 512], VGG_CONVS[depth])):
            layers = []
            for _ in range(convs):
                layers += [conv3x3(cin, width, bias=True), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
            setattr(self, f"block{k}", nn.Sequential(*layers[:-1]))  # last ReLU in forward
        for k in range(4):
            setattr(self, f"pool{k}", nn.MaxPool2d(2))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        for k in range(5):
            x = F.relu(getattr(self, f"block{k}")(x))
            if k < 3:  # pool3 only for 64-pixel inputs
                x = getattr(self, f"pool{k}")(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def source_network(arch: str, layout: str, num_classes: int) -> nn.Module:
    """The source's network for a registry entry's kdrun `arch` and `layout`."""
    if arch == "resnet50":
        return ResNet(num_classes, widths=(64,), bottleneck=True)
    if arch.startswith("resnet"):
        depth, _, wide = arch[len("resnet"):].partition("x")
        widths = (32, 64, 128, 256) if wide else (16, 16, 32, 64)
        return ResNet(num_classes, int(depth), widths)
    if arch.startswith("wrn"):
        depth, widen = (int(p) for p in arch.split("_")[1:3])
        return WRN(num_classes, depth, widen, sequential=layout == "wrn_sequential")
    if arch.startswith("vgg"):
        return VGG(num_classes, int(arch[3:]))
    raise ValueError(arch)


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight and BN statistic random, so a key mapped to the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                if name.endswith("running_var"):
                    values = values + 0.5
                elif tensor.dim() > 1:  # about variance-preserving, so deep outputs stay finite
                    values = (values - 0.5) * 2 * (3 / tensor[0].numel()) ** 0.5
                tensor.copy_(values)
    return net.eval()
