"""Pseudo-labels for self-training: an un-noised teacher's predictions on unlabelled images,
filtered by confidence and balanced across classes (Xie et al., Noisy Student)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.inference_mode()
def predict(teacher: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
            autocast_ctx: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its probability) for uint8 images, with the teacher in eval mode."""
    teacher.eval()
    classes, confidences = [], []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(device).float() / 255
        with autocast_ctx():
            probabilities = teacher(batch).float().softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        classes.append(predicted.cpu())
        confidences.append(confidence.cpu())
    return torch.cat(classes), torch.cat(confidences)


def select(predicted: torch.Tensor, confidence: torch.Tensor, num_classes: int,
           threshold: float, balance: bool, per_class: int | None) -> torch.Tensor:
    """Indices of the pseudo-labelled images to train on. Those below `threshold` are dropped;
    with `balance`, each class keeps its `per_class` most confident images, and a class with
    fewer has its images repeated up to that count (`per_class` None: the mean count per class
    after the threshold)."""
    kept = (confidence >= threshold).nonzero().squeeze(1)
    if not balance or len(kept) == 0:
        return kept
    target = per_class or max(1, round(len(kept) / num_classes))
    chosen = []
    for c in range(num_classes):
        members = kept[predicted[kept] == c]
        if len(members) == 0:
            continue
        members = members[confidence[members].argsort(descending=True)]
        repeats = -(-target // len(members))  # ceil
        chosen.append(members.repeat(repeats)[:target])
    return torch.cat(chosen) if chosen else kept[:0]
