"""Fickle Teacher, from Noise as a Resource."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.methods.kd import KD, KDSettings
from kdrun.models import Classifier

PLACEMENTS = ("classifier", "stages")


@contextlib.contextmanager
def active_dropout(model: Classifier, p: float, placement: str):
    """Dropout at rate p inside `model` for the forward passes in this block, whatever the
    model's mode (BatchNorm keeps its running statistics): on the classifier's input, or on
    the output of every stage listed in the model's feature_info."""
    handles = []
    if placement == "classifier":
        handles.append(model.net.get_classifier().register_forward_pre_hook(
            lambda _m, args: (F.dropout(args[0], p, training=True), *args[1:])))
    else:
        for info in model.feature_info:
            handles.append(model.net.get_submodule(info["module"]).register_forward_hook(
                lambda _m, _args, out: F.dropout(out, p, training=True)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class FickleTeacherSettings(KDSettings):
    dropout: float = MISSING  # the teacher's dropout rate while it distils
    placement: str = MISSING  # classifier | stages
    teacher_trained_with_dropout: bool = MISSING  # teacher.drop_rate = dropout while it trains

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.dropout < 1, "method.dropout", self.dropout,
                "the teacher's dropout rate must lie in [0, 1)")
        require(self.placement in PLACEMENTS, "method.placement", self.placement,
                f"choose one of {', '.join(PLACEMENTS)}")
        if self.teacher_trained_with_dropout:
            require(self.placement == "classifier", "method.placement", self.placement,
                    "a teacher is trained with dropout on its classifier's input only: use "
                    "classifier, or method.teacher_trained_with_dropout=false")


class FickleTeacher(KD):
    """Fickle Teacher (Arani, Sarfraz, Zonooz; arXiv 1910.05057): the teacher's soft targets
    come from a stochastic forward pass with dropout active, so every batch meets a slightly
    different teacher; the student learns with the KD loss. The teacher is trained without
    dropout (only its distillation passes are noised), or with `teacher_trained_with_dropout`
    at the same rate, so the Monte Carlo dropout samples a network trained with it."""

    Settings = FickleTeacherSettings
    packable = False  # its teacher samples dropout: each student needs its own draws

    @classmethod
    def teacher_settings(cls, settings: FickleTeacherSettings) -> dict[str, Any]:
        if settings.teacher_trained_with_dropout:
            return {"drop_rate": settings.dropout}
        return {}

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with active_dropout(self.teacher, self.settings.dropout, self.settings.placement):
            return super().teacher_logits(images)
