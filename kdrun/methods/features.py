"""What the feature-distilling methods share about a network's feature maps: stage indices
checked against its feature_info, the stages two networks pair by default, and the shapes of
its stage outputs and pooled features (probed on the meta device: no memory, no compute)."""

from __future__ import annotations

import copy

import torch

from kdrun.errors import ConfigError
from kdrun.models import TIMM_PREFIX, Classifier


def check_stages(stages: list[int], model: Classifier, key: str) -> list[int]:
    """`stages` (negative counts from the end) as indices into the model's feature_info; an
    index the architecture does not have is one line."""
    n = len(model.feature_info)
    for index in stages:
        if not -n <= index < n:
            raise ConfigError(f"{key}={list(stages)} is not allowed: {model.arch} has {n} stages "
                              f"(feature_info), so indices run from {-n} to {n - 1}")
    return [index % n for index in stages]


def paired_stages(student: Classifier, teacher: Classifier) -> tuple[list[int], list[int]]:
    """The stages two networks distil level by level by default: the deepest of each, as many
    as the shallower network has, in order: the CRD table's networks as RepDistiller's
    `feats[1:-1]` pair them where their depths agree."""
    count = min(len(student.feature_info), len(teacher.feature_info))
    return ([len(student.feature_info) - count + i for i in range(count)],
            [len(teacher.feature_info) - count + i for i in range(count)])


def feature_shapes(model: Classifier, image_size: int, pre_activation: bool = False,
                   key: str = "method.pre_activation") -> tuple[list[torch.Size], int]:
    """(channels, height, width) of every stage output, and the width of the pooled features
    the classifier reads (timm's may be wider than num_features), for square inputs of
    `image_size`, from a forward pass of a meta-device copy. `key`: the setting that asked
    for pre-activation maps."""
    if pre_activation and model.arch.startswith(TIMM_PREFIX):
        raise ConfigError(f"{model.arch} gives its stage outputs after their activation only "
                          f"(timm's forward_intermediates): set {key}=false")
    probe = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        _, features, pooled = probe.forward_stages(x, pre_activation=pre_activation)
    return [f.shape[1:] for f in features], pooled.shape[1]
