"""What a data set loader returns: small-image splits as in-memory tensors (augmented in batches
on the training device), large-image splits as torch Datasets (DataLoader path)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class TensorSplit:
    images: torch.Tensor  # N x C x H x W, uint8 (0..255) or float32 pixels (1 = white; a
    #                       synthesised pool may go beyond [0, 1])
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """`images` of a TensorSplit as float32 on the [0, 1] scale (float32 ones as they are, not
    copied: the loaders' batches are already copies)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


@dataclass
class ImageData:
    train: TensorSplit | Dataset
    test: TensorSplit | Dataset
    classes: list[str]
    val: TensorSplit | Dataset | None = None  # held out of the training images, for selection


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def hold_out(split, size: int, seed: int):
    """A fixed, seeded split of `size` examples from the rest: (rest, held out)."""
    order = seeded_permutation(len(split), seed)
    return take(split, order[size:]), take(split, order[:size])


def holdout_split(split: TensorSplit, test_fraction: float, seed: int):
    """A fixed, seeded train/test split for data sets that ship without one."""
    return hold_out(split, max(1, round(len(split) * test_fraction)), seed)


def evaluation_view(split, test):
    """`split` read as the test split is: a Dataset's images through the test split's transform
    (a centre crop, not the training crops and flips); an in-memory split as it is (the loader
    augments only when training)."""
    if isinstance(split, TensorSplit):
        return split
    if isinstance(split, torch.utils.data.Subset):
        return torch.utils.data.Subset(evaluation_view(split.dataset, test), split.indices)
    while isinstance(test, torch.utils.data.Subset):
        test = test.dataset
    view = copy.copy(split)
    view.transform = test.transform
    return view


def split_labels(split) -> torch.Tensor:
    """Every label of a split, read without reading an image: an in-memory split's, a
    torchvision folder data set's `targets`, through Subsets and relabelled views."""
    if isinstance(split, TensorSplit):
        return split.labels
    if isinstance(split, torch.utils.data.Subset):
        return split_labels(split.dataset)[torch.as_tensor(split.indices, dtype=torch.long)]
    labels = getattr(split, "labels", getattr(split, "targets", None))
    if labels is None:
        raise TypeError(f"{type(split).__name__} does not list its labels")
    return torch.as_tensor(labels, dtype=torch.long)


def take(split, index: torch.Tensor):
    """The examples at `index`, of an in-memory split or of a Dataset."""
    if isinstance(split, TensorSplit):
        return split.take(index)
    return torch.utils.data.Subset(split, index.tolist())


def subset(split, size: int | None, seed: int):
    """A seeded random subset of `size` examples (None or a larger size: the whole split)."""
    if size is None or size >= len(split):
        return split
    return take(split, seeded_permutation(len(split), seed)[:size])
