"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, arXiv 2203.08679): KD split into
target-class KD (TCKD, Eq. 2: the binary target / non-target distribution) and non-target-class
KD (NCKD, Eq. 3: the distribution among the non-target classes), weighted apart (Eq. 7):
loss = ce_weight * CE + warm-up * (alpha * TCKD + beta * NCKD), each KL at temperature T times
T^2. As the official code (megvii-research/mdistiller, distillers/DKD.py): the non-target
distribution is a softmax with the target logit lowered by 1000, each KL summed and divided by
the batch, and the distillation term ramps up linearly (warmup.EpochRamp). With
`logit_standardization` both networks' logits are z-scored first (Sun et al., CVPR 2024: their
DKD+LS multiplies alpha and beta by 9 and takes T 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.losses import standardize
from kdrun.methods.warmup import EpochRamp, RampsUp

MASKED = 1000.0  # subtracted from the target logit (over T) to leave the non-target classes


@dataclass
class DKDSettings(MethodSettings):
    ce_weight: float = MISSING
    alpha: float = MISSING  # TCKD's weight
    beta: float = MISSING  # NCKD's weight
    T: float = MISSING
    warmup: int = MISSING  # epochs over which the distillation term ramps up (0: none)
    logit_standardization: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ce_weight", "alpha", "beta"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")
        require(self.warmup >= 0, "method.warmup", self.warmup, "epochs, >= 0")


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) at temperature T, each times T^2 and averaged over the batch."""
    s, t = student_logits.float() / T, teacher_logits.float() / T
    target = F.one_hot(labels, s.shape[1]).bool()

    def binary(p: torch.Tensor) -> torch.Tensor:  # [p(target), p(any other class)]
        inside = (p * target).sum(dim=1, keepdim=True)
        return torch.cat([inside, (p * ~target).sum(dim=1, keepdim=True)], dim=1)

    tckd = F.kl_div(binary(s.softmax(dim=1)).log(), binary(t.softmax(dim=1)),
                    reduction="batchmean")
    nckd = F.kl_div(F.log_softmax(s - MASKED * target, dim=1),
                    F.softmax(t - MASKED * target, dim=1), reduction="batchmean")
    return tckd * T * T, nckd * T * T


class DKD(RampsUp, Method):
    Settings = DKDSettings
    needs_teacher = True
    packable = True

    def __init__(self, settings: DKDSettings, networks):
        super().__init__(settings, networks)
        self.warmup = EpochRamp(settings.warmup)

    def training_step(self, images, labels):
        s = self.settings
        logits = self.student(self.student_input(images))
        teacher = self.teacher_logits(images)
        ce = F.cross_entropy(logits.float(), labels)
        if s.logit_standardization:
            tckd, nckd = dkd_terms(standardize(logits), standardize(teacher), labels, s.T)
        else:
            tckd, nckd = dkd_terms(logits, teacher, labels, s.T)
        loss = s.ce_weight * ce + self.warmup.factor * (s.alpha * tckd + s.beta * nckd)
        return {"loss": loss, "logits": logits, "ce": ce, "tckd": tckd, "nckd": nckd}
