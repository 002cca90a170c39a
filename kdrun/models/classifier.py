"""The model every part of kdrun sees: a network with its input normalisation inside, so data,
noise and attacks all work in pixel space [0, 1]. The normalised input reaches the network in
the run's memory format whatever layout the caller's tensor has, so a compiled network sees
one layout from training, evaluation, attacks and corruptions alike (no recompiles). Compiled,
the feature paths that methods call (embeddings, stage outputs) are compiled too."""

from __future__ import annotations

from collections.abc import Callable

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
        # the network class's feature paths, compiled by compile_network (else called as is)
        self._features: Callable | None = None
        self._intermediates: Callable | None = None

    def compile_network(self, **options) -> None:
        """torch.compile the network's forward and the feature paths methods call directly:
        `net.compile()` covers __call__ only, so feature methods would train uncompiled. The
        paths are compiled as functions of the network's class, taking the network, so a copy
        of this model runs its own weights through them."""
        self.net.compile(**options)
        cls = type(self.net)
        self._features = torch.compile(cls.forward_features, **options)
        self._intermediates = torch.compile(cls.forward_intermediates, **options)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the pooled features the classifier reads)."""
        features = self._features or type(self.net).forward_features
        final = features(self.net, self.normalize(x))
        return self.net.forward_head(final), self.net.forward_head(final, pre_logits=True)

    def forward_intermediates(self, x: torch.Tensor, indices=None, pre_activation: bool = False):
        """(logits, [feature maps of the stages at `indices`]) for zoo and timm networks alike.
        `pre_activation`: each stage's output before its last ReLU, as FitNet's and ReviewKD's
        references distil them (zoo networks only; timm's contract has post-activation maps)."""
        final, features = self._intermediates_of(x, indices, pre_activation)
        return self.net.forward_head(final), features

    def forward_stages(self, x: torch.Tensor, indices=None, pre_activation: bool = False):
        """(logits, [feature maps at `indices`], the pooled features the classifier reads)."""
        final, features = self._intermediates_of(x, indices, pre_activation)
        return (self.net.forward_head(final), features,
                self.net.forward_head(final, pre_logits=True))

    def _intermediates_of(self, x: torch.Tensor, indices, pre_activation: bool):
        """(the final feature map, the stage maps) through the compiled path when there is one;
        `net` is the network itself (compile_network compiles in place, never wraps it)."""
        kwargs = {"pre_activation": True} if pre_activation else {}
        intermediates = self._intermediates or type(self.net).forward_intermediates
        return intermediates(self.net, self.normalize(x), indices=indices, **kwargs)

    @property
    def feature_info(self) -> list[dict]:
        """One dict per stage: num_chs, reduction, module (timm's FeatureInfo entries)."""
        return [dict(info) for info in self.net.feature_info]
