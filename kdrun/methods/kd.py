"""Hinton knowledge distillation, the base of the noise methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.losses import distillation_kl, standardize


@dataclass
class KDSettings(MethodSettings):
    alpha: float = MISSING  # weight of the distillation term
    T: float = MISSING  # temperature
    logit_standardization: bool = MISSING  # z-score both networks' logits before the softmax

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "it must lie in [0, 1]")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")


class KD(Method):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean; arXiv 1503.02531):
    the student matches the teacher's temperature-softened outputs as well as the labels,
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T). With
    `logit_standardization` the KL reads z-scored logits (Sun et al., CVPR 2024, arXiv
    2403.01427; T is then their base temperature, 2 on CIFAR-100), the cross-entropy the raw
    ones, so every noise method built on KD can take it."""

    Settings = KDSettings
    needs_teacher = True

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels the cross-entropy term uses (label-noise methods override this)."""
        return labels

    def training_step(self, images, labels):
        s = self.settings
        logits = self.student(self.student_input(images))
        ce = F.cross_entropy(logits.float(), self.training_labels(labels))
        teacher = self.teacher_logits(images)
        if s.logit_standardization:
            kd = distillation_kl(standardize(logits), standardize(teacher), s.T)
        else:
            kd = distillation_kl(logits, teacher, s.T)
        loss = (1 - s.alpha) * ce + s.alpha * kd
        return {"loss": loss, "logits": logits, "ce": ce, "kd": kd}
