"""The OOD score protocol: a score reads a split's logits and penultimate features (or, like
ODIN, the images through the model), may fit statistics on the training set first, and gives
each image one number, higher for in-distribution."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from kdrun.checks import NoSettings
from kdrun.evaluation.base import Embedding


class Score:
    Settings: ClassVar[type] = NoSettings
    label: ClassVar[str]  # its name in the summary and the report
    fitted: ClassVar[bool] = False  # fits statistics on the training set's embedding
    reads_images: ClassVar[bool] = False  # scores images through the model (ODIN), not an
    #                                       embedding

    def __init__(self, settings):
        self.settings = settings

    def check(self, fitted_on: int) -> None:
        """What it needs of the number of training images it is fitted on, checked when the
        run starts."""

    def check_model(self, model: nn.Module) -> None:
        """What it needs of the model (ViM: a linear classifier), checked before training."""

    def fit(self, train: Embedding, model: nn.Module) -> None:
        """Statistics of the training set (its features, labels, the model's classifier)."""

    def score(self, batch: Embedding) -> torch.Tensor:
        raise NotImplementedError

    def score_images(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
