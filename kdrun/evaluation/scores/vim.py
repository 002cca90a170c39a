"""Virtual-logit matching (Wang et al., CVPR 2022, arXiv 2203.10807): with the origin
u = -pinv(W) b of the classifier (W, b), the residual of a feature's offset from u outside the
training features' principal subspace of dimension `dim`, scaled by alpha (the training set's
mean maximum logit over its mean residual norm), is a virtual logit; the score is the logits'
log-sum-exp minus it, energy - alpha * |x_res|."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.errors import ConfigError
from kdrun.evaluation.scores.base import Score


@dataclass
class Settings:
    dim: int | None = MISSING  # principal subspace; null: half the feature width

    def __post_init__(self):
        if self.dim is not None:
            require(self.dim >= 1, "eval.ood.settings.vim.dim", self.dim,
                    "use >= 1, or null for half the feature width")


class Vim(Score):
    Settings = Settings
    label = "ViM"
    fitted = True

    def check_model(self, model):
        head = model.net.get_classifier()
        if not isinstance(head, nn.Linear) or head.bias is None:
            what = "a Linear without a bias" if isinstance(head, nn.Linear) else \
                type(head).__name__
            raise ConfigError(f"eval.ood.scores: vim reads the weights and bias of a linear "
                              f"classifier, and {model.arch}'s is {what}: leave vim out for "
                              "this model")
        width = head.weight.shape[1]
        if self.dim(width) >= width:
            raise ConfigError(f"eval.ood.settings.vim.dim={self.dim(width)} leaves no residual "
                              f"of the {width}-wide features of {model.arch}: use a dim below "
                              f"{width}, or null for {width // 2}")

    def dim(self, width: int) -> int:
        return self.settings.dim if self.settings.dim is not None else width // 2

    def fit(self, train, model):
        head = model.net.get_classifier()
        weight, bias = head.weight.detach().double(), head.bias.detach().double()
        width = weight.shape[1]
        self.origin = -torch.linalg.pinv(weight) @ bias
        centred = train.features.double() - self.origin
        _, vectors = torch.linalg.eigh(centred.T @ centred / len(centred))  # ascending
        self.residual_space = vectors[:, : width - self.dim(width)]  # all but the largest
        residual = (centred @ self.residual_space).norm(dim=1)
        self.alpha = train.logits.double().max(dim=1).values.mean() / residual.mean()

    def score(self, batch):
        residual = ((batch.features.double() - self.origin) @ self.residual_space).norm(dim=1)
        return (batch.logits.double().logsumexp(dim=1) - self.alpha * residual).float()
