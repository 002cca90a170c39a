"""Large-image data sets (the DataLoader path) seen another way: the same files under another
transform, or with other labels. Used by methods that relabel or re-noise a data set."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Subset


def with_transform(dataset: Dataset, transform: Callable) -> Dataset:
    """`dataset` (a torchvision folder data set, or a Subset of one) with another transform."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__} has no transform to replace")
    view = copy.copy(dataset)
    view.transform = transform
    return view


class Relabelled(Dataset):
    """The images of `dataset` at `indices` (repeats allowed), with `labels` for theirs."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, labels: torch.Tensor):
        self.dataset = dataset
        self.indices = indices.tolist()
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, _ = self.dataset[self.indices[i]]
        return image, self.labels[i]
