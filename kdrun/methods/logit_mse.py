"""Logit regression: the student mimics the teacher's logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings


@dataclass
class LogitMSESettings(MethodSettings):
    alpha: float = MISSING  # weight of the logit regression; (1 - alpha) weighs cross-entropy

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "it must lie in [0, 1]")


class LogitMSE(Method):
    """Do Deep Nets Really Need to be Deep? (Ba & Caruana, NeurIPS 2014, arXiv 1312.6184): the
    student regresses the teacher's logits, L = 1/(2N) sum_n ||z_s(x_n) - z_t(x_n)||^2, instead
    of matching softened probabilities; alpha=1 is the paper's pure mimic learning, a smaller
    alpha adds (1 - alpha) * CE on the labels (ours)."""

    Settings = LogitMSESettings
    needs_teacher = True
    packable = True

    def training_step(self, images, labels):
        logits = self.student(self.student_input(images))
        target = self.teacher_logits(images).float()
        mse = F.mse_loss(logits.float(), target, reduction="sum") / (2 * len(labels))
        ce = F.cross_entropy(logits.float(), labels)
        alpha = self.settings.alpha
        return {"loss": alpha * mse + (1 - alpha) * ce, "logits": logits, "mse": mse, "ce": ce}
