"""ODIN (Liang et al., ICLR 2018, arXiv 1706.02690): the maximum softmax probability at a high
temperature T of the image moved a step eps against the gradient of its own prediction's loss,
x - eps * sign(grad_x CE(f(x) / T, argmax f(x))). The model reads [0, 1] pixels and normalises
inside, so eps is in pixel units, as in the official code, which divides the gradient by the
normalisation's std before stepping in normalised space. OpenOOD's CIFAR setting: T 1000,
eps 0.0014."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.evaluation.scores.base import Score


@dataclass
class Settings:
    temperature: float = MISSING
    eps: float = MISSING

    def __post_init__(self):
        require(self.temperature > 0, "eval.ood.settings.odin.temperature", self.temperature,
                "use > 0")
        require(self.eps >= 0, "eval.ood.settings.odin.eps", self.eps, "use >= 0")


class Odin(Score):
    Settings = Settings
    label = "ODIN"
    reads_images = True

    def score_images(self, model, images):
        t, eps = self.settings.temperature, self.settings.eps
        with torch.enable_grad():  # fp32, like the attacks
            x = images.detach().requires_grad_(True)
            logits = model(x).float() / t
            loss = F.cross_entropy(logits, logits.argmax(dim=1))
            grad, = torch.autograd.grad(loss, x)
        with torch.no_grad():
            moved = x.detach() - eps * grad.sign()
            return (model(moved).float() / t).softmax(dim=1).max(dim=1).values
