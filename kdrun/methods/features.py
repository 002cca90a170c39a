"""What the feature-distilling methods share: stage indices checked against a network's
feature_info, the shapes of its stage outputs (probed on the meta device: no memory, no
compute), and FitNet's regressor, which ReviewKD and others reuse to connect two shapes."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

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
    as the shallower network has, in order. This pairs the CRD table's networks as their
    references do (RepDistiller's VGG counts its first conv group as the stem; kdrun's, a
    stage)."""
    count = min(len(student.feature_info), len(teacher.feature_info))
    return ([len(student.feature_info) - count + i for i in range(count)],
            [len(teacher.feature_info) - count + i for i in range(count)])


def stage_shapes(model: Classifier, image_size: int,
                 pre_activation: bool = False) -> list[torch.Size]:
    """(channels, height, width) of every stage output for square inputs of `image_size`,
    from a forward pass of a meta-device copy (shapes only)."""
    if pre_activation and model.arch.startswith(TIMM_PREFIX):
        raise ConfigError(f"{model.arch} gives its stage outputs after their activation only "
                          "(timm's forward_intermediates): set method.pre_activation=false")
    probe = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        _, features = probe.forward_intermediates(x, pre_activation=pre_activation)
    return [f.shape[1:] for f in features]


class HintRegressor(nn.Module):
    """FitNet's regressor (Romero et al., Sec. 2.2) as the CRD benchmark writes it
    (HobbitLong/RepDistiller, models/util.py ConvReg): conv-BN-ReLU from the student's hint map
    to the teacher's. Spatial sizes decide the conv: half the student's -> 3x3 stride 2, twice
    -> 4x4 transposed conv stride 2, smaller -> the paper's kernel of 1 + s - t; a student map
    smaller in any other way cannot be connected."""

    def __init__(self, student: torch.Size, teacher: torch.Size, key: str):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"{key}: a regressor cannot connect the student's {s_h}x{s_w} "
                              f"feature map to the teacher's {t_h}x{t_w} (it maps a map to one "
                              "at most as large, or twice as large): choose stages whose "
                              "sizes fit")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger of two feature maps average-pooled to the other's spatial size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-1] > b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])
