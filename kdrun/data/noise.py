"""Noise as the *Noise as a Resource* methods use it: on inputs, labels and teacher outputs.
Drawn on the tensors' device from torch's seeded generators, so a run repeats exactly."""

from __future__ import annotations

import torch

NOISE_SPACES = ("pixel", "normalized")


def gaussian_noise(images: torch.Tensor, sigma: float, space: str,
                   std: torch.Tensor | None = None) -> torch.Tensor:
    """images + N(0, sigma^2), unclipped. `pixel`: sigma in [0, 1] pixel units; `normalized`:
    sigma in units of the model's normalised input, i.e. sigma * std per channel in pixels."""
    if sigma == 0:
        return images
    noise = torch.randn_like(images) * sigma
    if space == "normalized":
        noise = noise * std.view(1, -1, 1, 1)
    return images + noise


def flip_labels(labels: torch.Tensor, rate: float, num_classes: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Each label changed, with probability `rate`, to one of the other `num_classes - 1`
    classes, drawn uniformly: `rate` is the share of labels that change (Messy Collaboration's
    corrupted label is a wrong one). Which labels flip and what they become come from
    `generator` (a fixed corruption of a data set) or from torch's seeded default one (afresh
    for every batch)."""
    flip = torch.rand(labels.shape, device=labels.device, generator=generator) < rate
    offset = torch.randint(1, num_classes, labels.shape, device=labels.device,
                           generator=generator)
    return torch.where(flip, (labels + offset) % num_classes, labels)


def shuffle_outputs(logits: torch.Tensor, rate: float) -> torch.Tensor:
    """For a random `rate` share of the rows, the row's values permuted across classes: the
    soft target keeps its confidence profile but points at random classes."""
    if rate == 0:
        return logits
    rows = torch.rand(logits.shape[0], device=logits.device) < rate
    permutation = torch.rand(logits.shape, device=logits.device).argsort(dim=1)
    return torch.where(rows[:, None], logits.gather(1, permutation), logits)
