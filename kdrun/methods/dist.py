"""DIST, Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022, arXiv
2205.10536): the student matches the teacher's predictions by relation, not exactly: one minus
the Pearson correlation of the two class-probability vectors of each image (inter-class
relation, Eq. 5), and of the two batch-probability vectors of each class (intra-class, Eq. 7),
softmax at temperature T, each times T^2; loss = ce_weight * CE + beta * inter + gamma *
intra. As the official code (hunto/image_classification_sota, losses/dist_kd.py): Pearson as
the cosine of mean-centred vectors with 1e-8 added to the product of their norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings

EPS = 1e-8


@dataclass
class DISTSettings(MethodSettings):
    ce_weight: float = MISSING
    beta: float = MISSING  # inter-class relation's weight
    gamma: float = MISSING  # intra-class relation's weight
    T: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ce_weight", "beta", "gamma"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two N x C matrices."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses, each times T^2."""
    ps = F.softmax(student_logits.float() / T, dim=1)
    pt = F.softmax(teacher_logits.float() / T, dim=1)
    inter = 1 - pearson(ps, pt).mean()
    intra = 1 - pearson(ps.T, pt.T).mean()
    return inter * T * T, intra * T * T


class DIST(Method):
    Settings = DISTSettings
    needs_teacher = True
    packable = True

    def training_step(self, images, labels):
        s = self.settings
        logits = self.student(self.student_input(images))
        inter, intra = dist_terms(logits, self.teacher_logits(images), s.T)
        ce = F.cross_entropy(logits.float(), labels)
        loss = s.ce_weight * ce + s.beta * inter + s.gamma * intra
        return {"loss": loss, "logits": logits, "ce": ce, "inter": inter, "intra": intra}
