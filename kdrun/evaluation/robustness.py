"""Adversarial robustness in pixel space [0, 1] (the model normalises its own input): PGD with
an L-inf or L2 budget (Madry et al., arXiv 1706.06083) and FGSM (Goodfellow et al., arXiv
1412.6572). Attacks run in fp32 with the model in eval mode, so a dropout student is attacked
deterministically."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), labels)
    return torch.autograd.grad(loss, x)[0]


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the eps-ball around x0, then into the image range [0, 1]."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * (eps / length.clamp_min(1e-12)).clamp(max=1.0)
    return (x0 + delta).clamp(0, 1)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, step_size: float,
        steps: int, norm: str = "linf", random_start: bool = True) -> torch.Tensor:
    """Adversarial images maximising cross-entropy within ||x - images|| <= eps (norm: linf|l2)."""
    x0 = images.detach()
    x = x0
    if random_start:
        if norm == "linf":
            start = torch.empty_like(x0).uniform_(-eps, eps)
        else:  # a uniformly random radius in a random direction
            radius = torch.rand(len(x0), 1, 1, 1, device=x0.device) * eps
            start = _l2_normalise(torch.randn_like(x0)) * radius
        x = (x0 + start).clamp(0, 1)
    for _ in range(steps):
        grad = _grad(model, x, labels)
        step = grad.sign() if norm == "linf" else _l2_normalise(grad)
        x = _project(x.detach() + step_size * step, x0, eps, norm)
    return x.detach()


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps."""
    return (images + eps * _grad(model, images, labels).sign()).clamp(0, 1).detach()
