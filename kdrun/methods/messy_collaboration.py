"""Messy Collaboration, from Noise as a Resource."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.data.noise import flip_labels
from kdrun.methods.kd import KD, KDSettings


@dataclass
class MessyCollaborationSettings(KDSettings):
    label_noise: float = MISSING  # share of labels changed to another class

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.label_noise <= 1, "method.label_noise", self.label_noise,
                "it is a probability, in [0, 1]")


class MessyCollaboration(KD):
    """Messy Collaboration (Arani, Sarfraz, Zonooz; arXiv 1910.05057): while distilling, each
    training label is changed with probability `label_noise` to another class, drawn
    uniformly from the other K - 1 (afresh every batch); the KD loss's cross-entropy uses the
    corrupted label, so the teacher's soft targets carry the student through the label
    noise."""

    Settings = MessyCollaborationSettings

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return flip_labels(labels, self.settings.label_noise, self.student.num_classes)
