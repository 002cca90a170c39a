"""StagedNet with a 1x1 conv-BN-ReLU between the last stage and the pooling, which widens the
pooled vector: MobileNetV2's 1280-wide last conv and ShuffleNetV2's conv5."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.models.zoo.staged import StagedNet, _init_weights


class ConvHeadNet(StagedNet):
    """The head conv belongs to the final feature map (and so to the pooled vector the
    classifier reads), not to the last stage's reported output: RepDistiller's is_feat lists
    and timm's feature_info both take the last stage before it."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], stage_channels: list[int],
                 stage_reductions: list[int], head_channels: int, num_classes: int,
                 drop_rate: float = 0.0):
        super().__init__(stem, stages, stage_channels, stage_reductions, nn.Identity(),
                         num_classes, drop_rate)
        del self.fc  # rebuilt after the head: the state dict then runs in forward order
        self.head = nn.Sequential(nn.Conv2d(stage_channels[-1], head_channels, 1, bias=False),
                                  nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True))
        self.num_features = head_channels
        self.fc = nn.Linear(head_channels, num_classes)
        _init_weights(self.head)
        _init_weights(self.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(super().forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, pre_activation: bool = False,
                              **kwargs):
        x, intermediates = super().forward_intermediates(x, indices, pre_activation, **kwargs)
        return self.head(x), intermediates
