"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv 1612.03928): the student matches
the teacher's spatial attention maps at matching stages. A map is the channel mean of |A|^p
(Sec. 3.1, F^p_sum; the mean differs from the sum by a constant that the normalisation takes
out), flattened and L2-normalised; the loss is Eq. 2's distance between the normalised maps,
loss = ce_weight * CE + beta * sum over stage pairs of mean((Q_s - Q_t)^2). As the references
(HobbitLong/RepDistiller distiller_zoo/AT.py, megvii-research/mdistiller distillers/AT.py)
the squared distance is averaged over the batch and the map (the paper's beta / 2 with beta
divided by those sizes) and a larger map is average-pooled to the smaller one's size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.errors import ConfigError
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.features import check_stages, paired_stages


@dataclass
class ATSettings(MethodSettings):
    ce_weight: float = MISSING
    beta: float = MISSING  # the attention term's weight
    p: float = MISSING  # the power of |A| in the attention map
    student_stages: list[int] | None = MISSING  # null: features.paired_stages
    teacher_stages: list[int] | None = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ce_weight", "beta"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        require(self.p > 0, "method.p", self.p, "the power must be > 0")


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger of two feature maps average-pooled to the other's spatial size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-1] > b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def attention_map(features: torch.Tensor, p: float) -> torch.Tensor:
    """Each image's spatial attention, mean over channels of |A|^p, flattened, unit L2 norm."""
    return F.normalize(features.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    student, teacher = pool_to_smaller(student, teacher)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


class AT(Method):
    Settings = ATSettings
    needs_teacher = True
    reads_features = True

    def __init__(self, settings: ATSettings, networks):
        super().__init__(settings, networks)
        s = settings
        student, teacher = paired_stages(self.student, self.teacher)
        self.student_stages = check_stages(student if s.student_stages is None
                                           else s.student_stages, self.student,
                                           "method.student_stages")
        self.teacher_stages = check_stages(teacher if s.teacher_stages is None
                                           else s.teacher_stages, self.teacher,
                                           "method.teacher_stages")
        if len(self.student_stages) != len(self.teacher_stages):
            raise ConfigError(
                f"method.student_stages and method.teacher_stages pair stages one to one, but "
                f"{self.student.arch} gives {len(self.student_stages)} and {self.teacher.arch} "
                f"{len(self.teacher_stages)}: list as many of each")

    def training_step(self, images, labels):
        s = self.settings
        logits, student = self.student.forward_intermediates(images, self.student_stages)
        _, teacher = self.teacher_features(images, self.teacher_stages)
        ce = F.cross_entropy(logits.float(), labels)
        at = sum(attention_loss(a, b, s.p) for a, b in zip(student, teacher))
        return {"loss": s.ce_weight * ce + s.beta * at, "logits": logits, "ce": ce, "at": at}
