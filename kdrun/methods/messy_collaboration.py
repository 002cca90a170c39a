"""Messy Collaboration, from Noise as a Resource."""

from __future__ import annotations

import torch

from kdrun.data.noise import random_labels
from kdrun.errors import require
from kdrun.methods.base import METHODS
from kdrun.methods.kd import KD


@METHODS.register("messy_collaboration")
class MessyCollaboration(KD):
    """Messy Collaboration (Arani, Sarfraz, Zonooz; arXiv 1910.05057): while distilling, each
    training label is replaced with probability `label_noise` by a uniformly drawn class
    (afresh every batch); the KD loss's cross-entropy uses the corrupted label, so the
    teacher's soft targets carry the student through the label noise."""

    def __init__(self, student, teacher, alpha: float, T: float, label_noise: float):
        super().__init__(student, teacher, alpha, T)
        self.label_noise = label_noise

    @classmethod
    def check_settings(cls, settings) -> None:
        require(0 <= settings.label_noise <= 1, "method.label_noise", settings.label_noise,
                "it is a probability, in [0, 1]")

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return random_labels(labels, self.label_noise, self.student.num_classes)
