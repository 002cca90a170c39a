"""The model every part of kdrun sees: a network with its input normalisation inside, so data,
noise and attacks all work in pixel space [0, 1]. The normalised input reaches the network in
the run's memory format whatever layout the caller's tensor has, so a compiled network sees
one layout from training, evaluation, attacks and corruptions alike (no recompiles)."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, net: nn.Module, arch: str, num_classes: int, mean: list[float],
                 std: list[float]):
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.memory_format = torch.contiguous_format  # the run's (models/prepare.py)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the pooled features the classifier reads)."""
        final = self.net.forward_features(self.normalize(x))
        return self.net.forward_head(final), self.net.forward_head(final, pre_logits=True)

    def forward_intermediates(self, x: torch.Tensor, indices=None):
        """(logits, [feature maps of the stages at `indices`]) for zoo and timm networks alike."""
        final, features = self.net.forward_intermediates(self.normalize(x), indices=indices)
        return self.net.forward_head(final), features

    @property
    def feature_info(self) -> list[dict]:
        """One dict per stage: num_chs, reduction, module (timm's FeatureInfo entries)."""
        return [dict(info) for info in self.net.feature_info]
