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
    ce_weight: float | None = None  # the cross-entropy's weight in place of 1 - alpha
    kd_weight: float | None = None  # the distillation term's weight in place of alpha

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "it must lie in [0, 1]")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")
        for key in ("ce_weight", "kd_weight"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"method.{key}", value,
                    "use >= 0, or null for the alpha weighting")

    def weights(self) -> tuple[float, float]:
        """(cross-entropy's, distillation term's): (1 - alpha, alpha) unless given apart."""
        return (1 - self.alpha if self.ce_weight is None else self.ce_weight,
                self.alpha if self.kd_weight is None else self.kd_weight)


class KD(Method):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean; arXiv 1503.02531):
    the student matches the teacher's temperature-softened outputs as well as the labels,
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T). With
    `logit_standardization` the KL reads z-scored logits (Sun et al., CVPR 2024, arXiv
    2403.01427; T is then their base temperature, 2 on CIFAR-100), the cross-entropy the raw
    ones, so every noise method built on KD can take it. `ce_weight` and `kd_weight` weigh the
    two terms apart, as the papers that do not tie them (KD+LS: 0.1 and 9)."""

    Settings = KDSettings
    needs_teacher = True
    packable = True

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
        ce_weight, kd_weight = s.weights()
        loss = ce_weight * ce + kd_weight * kd
        return {"loss": loss, "logits": logits, "ce": ce, "kd": kd}
