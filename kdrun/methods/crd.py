"""Contrastive Representation Distillation (Tian, Krishnan, Isola; ICLR 2020, arXiv 1910.10699):
the student's and the teacher's pooled features, each through a linear embedding head onto the
unit sphere, are told apart by a noise-contrastive estimate (Sec. 3.2-3.4, Eq. 18) against
negatives drawn from a memory bank of every training image's past embeddings, in both
directions (the teacher's embedding scored against the student bank, and the student's against
the teacher bank). As the official code (HobbitLong/RepDistiller crd/criterion.py,
crd/memory.py, dataset/cifar100.py `mode=exact`): the positive is the image's own bank row,
negatives are images of other classes, scores exp(v'u / nce_T) divided by a constant Z set
from the first batch's mean, the NCE loss with noise probability 1/N, and after scoring each
bank row moves to normalise(momentum * row + (1 - momentum) * embedding).
loss = ce_weight * CE + kd_weight * T^2 KL + beta * (NCE_student + NCE_teacher).

Ours: negatives are drawn uniformly from the other classes with replacement on the device (the
reference draws them without replacement on the host; 16384 of 49,500 repeat ~15 % as often),
so the step has no host work and no data-dependent shape; under torchrun every rank moves the
bank rows of the whole global batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.data import split_labels
from kdrun.errors import ConfigError
from kdrun.methods.base import Method, MethodSettings
from kdrun.methods.features import feature_shapes
from kdrun.methods.losses import distillation_kl
from kdrun.runtime import distributed

EPS = 1e-7  # the reference's, in the NCE loss's denominators


@dataclass
class CRDSettings(MethodSettings):
    ce_weight: float = MISSING
    kd_weight: float = MISSING  # CRD+KD: the Hinton term's weight (0: CRD alone)
    T: float = MISSING  # the Hinton term's temperature
    beta: float = MISSING  # the contrastive term's weight
    feat_dim: int = MISSING  # the embedding's size
    negatives: int = MISSING  # negatives per image (the paper's N, nce_k)
    nce_T: float = MISSING  # the scores' temperature
    momentum: float = MISSING  # of the bank rows' update

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ce_weight", "kd_weight", "beta"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        for key in ("T", "nce_T"):
            require(getattr(self, key) > 0, f"method.{key}", getattr(self, key),
                    "a temperature must be > 0")
        require(self.feat_dim >= 1, "method.feat_dim", self.feat_dim, "use >= 1")
        require(self.negatives >= 1, "method.negatives", self.negatives, "use >= 1")
        require(0 <= self.momentum < 1, "method.momentum", self.momentum,
                "it must lie in [0, 1)")


def embedding(features: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """The reference's Embed: linear, then divided by the L2 norm."""
    z = head(features).float()
    return z / z.pow(2).sum(dim=1, keepdim=True).sqrt()


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """Eq. 18's estimate as the reference's ContrastLoss computes it, for scores [positive,
    negatives...] per row: -(log D(positive) + sum of log(1 - D(negative))), averaged over
    the batch, with noise probability 1/n_data for each of the m negatives."""
    m = scores.shape[1] - 1
    noise = m / n_data
    positive, negative = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + EPS))
    log_d0 = torch.log(noise / (negative + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class MemoryBank(nn.Module):
    """Every training image's last embeddings, the student's and the teacher's, initialised
    uniform in +-1/sqrt(dim/3) as the reference's, and how to draw negatives for a batch: a
    class-sorted order of the split, so an index uniform over the images of the other classes
    is one random integer and one gather."""

    def __init__(self, labels: torch.Tensor, dim: int, negatives: int, device: torch.device):
        super().__init__()
        n, bound = len(labels), 1 / math.sqrt(dim / 3)
        self.register_buffer("student", (torch.rand(n, dim, device=device) * 2 - 1) * bound)
        self.register_buffer("teacher", (torch.rand(n, dim, device=device) * 2 - 1) * bound)
        labels = labels.to(device)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        counts = torch.bincount(labels)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_size", counts, persistent=False)
        self.negatives = negatives

    def contrast_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Each image's own row, then `negatives` rows drawn uniformly from the other classes."""
        label = self.labels[indices]
        start, size = self.class_start[label, None], self.class_size[label, None]
        draw = torch.rand(len(indices), self.negatives, device=indices.device)
        place = (draw * (len(self.labels) - size)).long()  # among the others' places
        place = place + size * (place >= start)  # skip the own class's block
        return torch.cat([indices[:, None], self.by_class[place]], dim=1)

    @staticmethod
    def scores(bank: torch.Tensor, embedded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """row . embedding for each image's `rows`, in float32 (exp(./0.07) would magnify
        bfloat16's rounding 14 times): the whole bank times the batch, then a gather, which
        reads the bank once where gathering rows first would copy K+1 of them per image."""
        with torch.autocast(embedded.device.type, enabled=False):
            every = bank @ embedded.float().T  # N x B
        return every.gather(0, rows.T).T

    @torch.no_grad()
    def update(self, bank: torch.Tensor, indices: torch.Tensor, embedded: torch.Tensor,
               momentum: float) -> None:
        rows = bank[indices] * momentum + embedded * (1 - momentum)
        bank.index_copy_(0, indices, F.normalize(rows, dim=1))


class CRD(Method):
    Settings = CRDSettings
    needs_teacher = True
    needs_indices = True
    reads_features = True

    def __init__(self, settings: CRDSettings, networks):
        super().__init__(settings, networks)
        _, student = feature_shapes(self.student, self.image_size)
        _, teacher = feature_shapes(self.teacher, self.image_size)
        self.student_head = nn.Linear(student, settings.feat_dim)
        self.teacher_head = nn.Linear(teacher, settings.feat_dim)
        # the score normalisers, set from the first batch (0: not yet), as the reference's Z
        self.register_buffer("z", torch.zeros(2))
        self.bank: MemoryBank | None = None  # made for the training split (stages)
        self.moves: tuple[torch.Tensor, ...] = ()  # the step's (indices, student, teacher)

    @classmethod
    def check_data(cls, settings: CRDSettings, data) -> None:
        n = len(data.train)
        if settings.negatives >= n:
            raise ConfigError(f"method.negatives={settings.negatives} is not allowed: the memory "
                              f"bank holds the {n} training images, and negatives come from "
                              "them: use fewer (the paper's 16384 fits CIFAR's 50,000)")

    def stages(self, data, epochs, run):
        device = next(self.student.parameters()).device
        self.bank = MemoryBank(split_labels(data.train), self.settings.feat_dim,
                               self.settings.negatives, device)
        yield from super().stages(data, epochs, run)

    def after_update(self) -> None:
        if self.moves:
            indices, student, teacher = self.moves
            self.bank.update(self.bank.student, indices, student, self.settings.momentum)
            self.bank.update(self.bank.teacher, indices, teacher, self.settings.momentum)
            self.moves = ()

    def training_step(self, images, labels, indices):
        s = self.settings
        logits, student = self.student.forward_embedding(images)
        teacher_logits, teacher = self.teacher_embedding(images)
        v_s, v_t = embedding(student, self.student_head), embedding(teacher, self.teacher_head)
        rows = self.bank.contrast_indices(indices)
        # the teacher's embedding against the student bank, the student's against the teacher's
        scores = torch.exp(torch.stack([self.bank.scores(self.bank.student, v_t, rows),
                                        self.bank.scores(self.bank.teacher, v_s, rows)])
                           / s.nce_T)
        n = len(self.bank.labels)
        with torch.no_grad():  # the first (global) batch's mean sets each Z, once
            first = distributed.gather_batch(scores.mean(dim=(1, 2))[None]).mean(dim=0)
            self.z.copy_(torch.where(self.z > 0, self.z, first * n))
        scores = scores / self.z[:, None, None]
        crd = nce_loss(scores[0], n) + nce_loss(scores[1], n)
        # the rows move after the backward pass, which reads the bank as it was scored
        self.moves = (distributed.gather_batch(indices), distributed.gather_batch(v_s.detach()),
                      distributed.gather_batch(v_t.detach()))
        ce = F.cross_entropy(logits.float(), labels)
        loss = s.ce_weight * ce + s.beta * crd
        out = {"loss": loss, "logits": logits, "ce": ce, "crd": crd}
        if s.kd_weight:
            kd = distillation_kl(logits, teacher_logits, s.T)
            out["loss"], out["kd"] = loss + s.kd_weight * kd, kd
        return out
