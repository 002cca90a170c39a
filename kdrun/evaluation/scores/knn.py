"""Deep nearest neighbours (Sun et al., ICML 2022, arXiv 2204.06507): the negative distance of
an image's unit-normalised penultimate feature to its k-th nearest unit-normalised training
feature (the paper's k: 50 for CIFAR-10 with the whole training set, 200 for CIFAR-100). On the
device by matrix products, queries in chunks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.errors import ConfigError
from kdrun.evaluation.scores.base import Score

QUERY_CHUNK = 1024  # queries x bank distances held at once


@dataclass
class Settings:
    k: int = MISSING

    def __post_init__(self):
        require(self.k >= 1, "eval.ood.settings.knn.k", self.k, "use >= 1")


class Knn(Score):
    Settings = Settings
    label = "KNN"
    fitted = True

    def check(self, fitted_on: int) -> None:
        if fitted_on < self.settings.k:
            raise ConfigError(f"eval.ood.settings.knn.k={self.settings.k} is more than the "
                              f"{fitted_on} training images it is fitted on: lower k or raise "
                              "eval.ood.fit_subset")

    def fit(self, train, model):
        self.bank = F.normalize(train.features, dim=1)

    def score(self, batch):
        z = F.normalize(batch.features, dim=1)
        kth = []
        for chunk in z.split(QUERY_CHUNK):
            # |a - b|^2 = 2 - 2 a.b for unit vectors: the k-th largest similarity is the k-th
            # nearest neighbour
            similarity = chunk @ self.bank.T
            top = similarity.topk(self.settings.k, dim=1).values[:, -1]
            kth.append((2 - 2 * top).clamp_min(0).sqrt())
        return -torch.cat(kth)
