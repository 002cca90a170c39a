"""Hinton knowledge distillation, the base of the noise methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.methods.base import METHODS, Method
from kdrun.methods.losses import distillation_kl


@METHODS.register("kd")
class KD(Method):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean; arXiv 1503.02531):
    the student matches the teacher's temperature-softened outputs as well as the labels,
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T)."""

    needs_teacher = True

    def __init__(self, student, teacher, alpha: float, T: float):
        super().__init__(student, teacher)
        self.alpha = alpha
        self.T = T

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels the cross-entropy term uses (label-noise methods override this)."""
        return labels

    def training_step(self, images, labels):
        logits = self.student(self.student_input(images))
        ce = F.cross_entropy(logits.float(), self.training_labels(labels))
        kd = distillation_kl(logits, self.teacher_logits(images), self.T)
        loss = (1 - self.alpha) * ce + self.alpha * kd
        return {"loss": loss, "logits": logits, "ce": ce, "kd": kd}
