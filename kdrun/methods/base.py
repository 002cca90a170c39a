"""The method protocol: a method owns the networks it trains and says how one batch becomes
losses; the trainer does the backward pass and steps the optimiser. A new method is one file
here plus one YAML in conf/method/."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from kdrun.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")


def freeze(model: nn.Module) -> nn.Module:
    """The one place a teacher is frozen: no gradients, so no optimiser ever updates it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Method(nn.Module):
    needs_teacher: ClassVar[bool] = False
    # Fickle Teacher-style methods keep the teacher's dropout active while distilling.
    teacher_stochastic: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns 'loss' (what the trainer minimises), 'logits' (the student's, for train
        accuracy) and any scalar parts to log."""
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network that evaluation measures."""
        return self.student

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_stochastic)
        return self

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.teacher(images)
