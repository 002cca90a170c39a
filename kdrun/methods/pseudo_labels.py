"""Pseudo-labels for self-training: an un-noised teacher's predictions on unlabelled images,
filtered by confidence and balanced across classes (Xie et al., Noisy Student)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from kdrun.runtime import distributed


@torch.inference_mode()
def predict(teacher: nn.Module, batches: Iterable, autocast_ctx: Callable) -> torch.Tensor:
    """The teacher's class probabilities (float16, on the CPU), in eval mode, for every image
    of an evaluation loader, in order. Under torch.distributed each rank scores its part (a
    sharded loader) and every rank gets the whole, so all select the same images."""
    teacher.eval()
    parts = [torch.zeros(0, teacher.num_classes, dtype=torch.float16)]
    for images, _ in batches:
        with autocast_ctx():
            parts.append(teacher(images).float().softmax(dim=1).half().cpu())
    return distributed.gather(torch.cat(parts))


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
