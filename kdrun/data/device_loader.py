"""Batches for training and evaluation. Small-image splits live on the training device as uint8
and are augmented a whole batch at a time (no per-image Python); large-image data sets go
through a DataLoader. Both yield (float images in [0, 1], labels) on the device, in an order
fixed by (seed, epoch), so an interrupted run resumes onto the same batches. Under
torch.distributed (`shard=True`) a training loader yields this rank's share of each global
batch, and an evaluation loader this rank's part of the split."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdrun.data.augment import random_crop_flip
from kdrun.data.types import TensorSplit, take
from kdrun.errors import ConfigError
from kdrun.runtime import distributed
from kdrun.runtime.run import Run

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def drops_last(n: int, batch_size: int, train: bool) -> bool:
    """Training drops the ragged last batch (BN statistics), unless it is the only batch."""
    return train and n >= batch_size


def num_batches(n: int, batch_size: int, train: bool) -> int:
    return n // batch_size if drops_last(n, batch_size, train) else math.ceil(n / batch_size)


class EpochBatches:
    """Batches of one pass over a split, in an order fixed by (seed, epoch)."""

    def __init__(self, batch_size: int, device: torch.device, seed: int, train: bool):
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class DeviceLoader(EpochBatches):
    """`ranks=(rank, world)`: every rank draws the whole global batch, augmentation included
    (cheap on the device), and keeps its slice, so the ranks together see exactly the
    single-process batches."""

    def __init__(self, split: TensorSplit, batch_size: int, device: torch.device, seed: int,
                 train: bool, crop_padding: int = 0, hflip: bool = False,
                 ranks: tuple[int, int] = (0, 1)):
        super().__init__(batch_size, device, seed, train)
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.rank, self.world = ranks

    def __len__(self) -> int:
        return num_batches(len(self.labels), self.batch_size, self.train)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        g = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch))
        order = (torch.randperm(n, generator=g, device=self.device) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.images[index]
            labels = self.labels[index]
            if self.train:
                images = random_crop_flip(images, self.crop_padding, self.hflip, g)
            if self.world > 1:
                share = len(index) // self.world
                mine = slice(self.rank * share, (self.rank + 1) * share)
                images, labels = images[mine], labels[mine]
            yield images.float().div_(255), labels


class DatasetLoader(EpochBatches):
    """The DataLoader path for large images, with the same interface as DeviceLoader."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int,
                 train: bool, num_workers: int, ranks: tuple[int, int] = (0, 1)):
        super().__init__(batch_size, device, seed, train)
        self.dataset = dataset
        self.num_workers = num_workers
        self.rank, self.world = ranks

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.train)

    def __iter__(self) -> Iterator[Batch]:
        drop_last = drops_last(len(self.dataset), self.batch_size, self.train)
        seed = epoch_seed(self.seed, self.epoch)
        if self.world > 1:  # rank r takes places r, r + world, ... of each global batch
            sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True,
                                         seed=seed, drop_last=True)
            options = {"sampler": sampler, "batch_size": self.batch_size // self.world}
        else:
            options = {"shuffle": self.train, "batch_size": self.batch_size,
                       "generator": torch.Generator().manual_seed(seed)}
        loader = DataLoader(self.dataset, drop_last=drop_last, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            **options)
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))


def make_loader(split: TensorSplit | Dataset, batch_size: int, run: Run, train: bool,
                augment: bool = True, shard: bool = False) -> DeviceLoader | DatasetLoader:
    """Batches on the run's device, in an order seeded by the run's seed. `augment=False`:
    training batches without the data set's crop/flip, for methods that distort batches
    themselves. `shard=True`: this rank's part under torch.distributed (`batch_size` stays the
    global batch when training)."""
    dataset_cfg = run.cfg.dataset
    sharded = shard and distributed.world_size() > 1
    ranks = (distributed.rank(), distributed.world_size()) if sharded and train else (0, 1)
    if sharded and not train:
        split = take(split, distributed.shard_indices(len(split)))
    if isinstance(split, TensorSplit):
        return DeviceLoader(split, batch_size, run.device, run.seed, train,
                            crop_padding=dataset_cfg.crop_padding if augment else 0,
                            hflip=dataset_cfg.hflip and augment, ranks=ranks)
    if not augment:
        raise ConfigError(f"this method distorts its own batches, which needs an in-memory data "
                          f"set (cifar10, cifar100, svhn, cinic10, digits), not "
                          f"{dataset_cfg.name}: choose one of those")
    return DatasetLoader(split, batch_size, run.device, run.seed, train, dataset_cfg.num_workers,
                         ranks)
