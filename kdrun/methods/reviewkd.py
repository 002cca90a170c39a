"""Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao, Jia; CVPR 2021, arXiv
2104.09044): each teacher stage is matched by a fusion of the student's stage at that level and
every deeper one ("review", Sec. 3.2-3.3). Attention-based fusion (ABF, Fig. 3a) runs from the
pooled features up to the first stage: each level's student map through a 1x1 conv-BN, fused
with the deeper level's residual by two sigmoid attention maps, then a 3x3 conv-BN to the
teacher's channels; the hierarchical context loss (HCL, Fig. 3b) compares each level's output
with the teacher's map at full size and average-pooled to 4, 2 and 1 (weights 1, 1/2, 1/4,
1/8, normalised), summed over levels.
loss = ce_weight * CE + min(epoch / warmup, 1) * review_weight * HCL.
As the official code (dvlab-research/ReviewKD, megvii-research/mdistiller distillers/
ReviewKD.py): the student's maps are its stage outputs and pooled features, the teacher's its
stages' pre-activation outputs (`preact_feats`) and pooled features; mid channels min(512,
the student's last); nearest-neighbour resizing; the levels' sizes come from the networks.
Networks with different numbers of stages pair their deepest (features.paired_stages)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.features import feature_shapes, paired_stages
from kdrun.methods.warmup import EpochRamp, RampsUp

POOLED_LEVELS = (4, 2, 1)  # HCL's pyramid


@dataclass
class ReviewKDSettings(MethodSettings):
    ce_weight: float = MISSING
    review_weight: float = MISSING
    warmup: int = MISSING  # epochs over which the review term ramps up (0: none)
    teacher_pre_activation: bool = MISSING  # the teacher's maps before their last ReLU
    student_pre_activation: bool = MISSING  # the student's likewise (mdistiller STU_PREACT)
    max_mid_channels: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ce_weight", "review_weight"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        require(self.warmup >= 0, "method.warmup", self.warmup, "epochs, >= 0")
        require(self.max_mid_channels >= 1, "method.max_mid_channels", self.max_mid_channels,
                "use >= 1")


class AttentionFusion(nn.Module):
    """ABF: one level's student map onto the teacher's channels and size, fused with the deeper
    level's residual when there is one; returns (output, residual for the next level up)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1,
                                             bias=False), nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) \
            if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # the official init
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, x.shape[-2:], mode="nearest")
            z = self.attention(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """HCL summed over levels: per level the full-size MSE (weight 1) and the MSE of maps
    average-pooled to 4, 2, 1 where smaller than the map (weights halving from 1/2), divided by
    the weights' sum."""
    total = 0
    for s, t in zip(student, teacher, strict=True):
        s, t = s.float(), t.float()
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in POOLED_LEVELS:
            if size >= s.shape[-1]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size),
                                              F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total


def levels(shapes: list[torch.Size], pooled: int,
           stages: list[int]) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each level: the `stages`, then the pooled features as
    1x1."""
    return [tuple(shapes[i]) for i in stages] + [(pooled, 1, 1)]


class ReviewKD(RampsUp, Method):
    Settings = ReviewKDSettings
    needs_teacher = True
    reads_features = True

    def __init__(self, settings: ReviewKDSettings, networks):
        super().__init__(settings, networks)
        s = settings
        self.student_stages, self.teacher_stages = paired_stages(self.student, self.teacher)
        student = levels(*feature_shapes(self.student, self.image_size, s.student_pre_activation,
                                         "method.student_pre_activation"), self.student_stages)
        teacher = levels(*feature_shapes(self.teacher, self.image_size, s.teacher_pre_activation,
                                         "method.teacher_pre_activation"), self.teacher_stages)
        mid = min(s.max_mid_channels, student[-1][0])
        self.fusions = nn.ModuleList(  # shallowest level first; the deepest does not fuse
            AttentionFusion(c_in[0], mid, c_out[0], fuse=i < len(student) - 1)
            for i, (c_in, c_out) in enumerate(zip(student, teacher)))
        self.warmup = EpochRamp(s.warmup)

    def review(self, maps: list[torch.Tensor], like: list[torch.Tensor]) -> list[torch.Tensor]:
        """The fused outputs of every level (shallowest first), built from the deepest up, each
        the size of the teacher's map it is compared with (`like`)."""
        outputs, deeper = [], None
        for i in reversed(range(len(maps))):
            out, deeper = self.fusions[i](maps[i], deeper, like[i].shape[-2:])
            outputs.insert(0, out)
        return outputs

    def training_step(self, images, labels):
        s = self.settings
        logits, maps, pooled = self.student.forward_stages(images, self.student_stages,
                                                           s.student_pre_activation)
        with torch.no_grad():
            _, teacher, teacher_pooled = self.teacher.forward_stages(
                images, self.teacher_stages, s.teacher_pre_activation)
        teacher = [*teacher, teacher_pooled[:, :, None, None]]
        review = hcl_loss(self.review([*maps, pooled[:, :, None, None]], teacher), teacher)
        ce = F.cross_entropy(logits.float(), labels)
        loss = s.ce_weight * ce + self.warmup.factor * s.review_weight * review
        return {"loss": loss, "logits": logits, "ce": ce, "review": review}
