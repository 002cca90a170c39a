"""Batches for training and evaluation. Small-image splits live on the training device (uint8,
or a synthesised pool's floats) and are augmented a whole batch at a time (no per-image
Python); large-image data sets go through a DataLoader. Both yield (float images on the [0, 1]
scale, labels) on the device - and, when asked (`with_indices`), each image's index in the
split, for methods that keep a record per training image - in an order fixed by (seed, epoch),
so an interrupted run resumes onto the same batches. Under torch.distributed (`shard=True`) a
training loader yields this rank's share of each global batch, and an evaluation loader this
rank's part of the split."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdrun.data.augment import random_crop_flip
from kdrun.data.types import TensorSplit, take, unit_pixels
from kdrun.errors import ConfigError
from kdrun.runtime import distributed
from kdrun.runtime.run import Run

Batch = tuple[torch.Tensor, ...]  # images, labels (, indices)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


@dataclass(frozen=True)
class BatchMix:
    """Training batches from two parts of a split, as Noisy Student's official code builds them:
    each batch holds `batch_size` of the split's first `first` examples (the labelled ones) and
    `ratio` times as many of the rest (unlabel_ratio), and a pass is one over the first part,
    so an epoch counts labelled images."""
    first: int
    ratio: float

    def shares(self, batch_size: int) -> tuple[int, int]:
        """How many of each part a batch holds (a first part smaller than a batch: all of it)."""
        first = min(batch_size, self.first)
        return first, max(1, round(first * self.ratio))

    def num_batches(self, batch_size: int) -> int:
        """Batches in a pass: the first part's full batches (at least one)."""
        return max(1, self.first // batch_size)


def batch_indices(n: int, batch_size: int, train: bool, generator: torch.Generator,
                  mix: BatchMix | None = None) -> Iterator[torch.Tensor]:
    """The indices of each batch of one pass: shuffled for training, in order otherwise. With a
    mix (training only), each part is drawn in its own shuffled order, started again when it
    runs out, and each batch is shuffled (a mix with an empty part is ignored)."""
    device = generator.device
    if not mixes(n, train, mix):
        order = (torch.randperm(n, generator=generator, device=device) if train
                 else torch.arange(n, device=device))
        for i in range(num_batches(n, batch_size, train)):
            yield order[i * batch_size:(i + 1) * batch_size]
        return
    count, shares = mix.num_batches(batch_size), mix.shares(batch_size)
    parts = [_cycled(0, mix.first, count * shares[0], generator),
             _cycled(mix.first, n, count * shares[1], generator)]
    for i in range(count):
        index = torch.cat([part[i * k:(i + 1) * k] for part, k in zip(parts, shares,
                                                                    strict=True)])
        yield index[torch.randperm(len(index), generator=generator, device=device)]


def mixes(n: int, train: bool, mix: BatchMix | None) -> bool:
    """Whether training batches of a split of `n` follow `mix` (both its parts hold images)."""
    return train and mix is not None and 0 < mix.first < n


def pass_length(n: int, batch_size: int, train: bool, mix: BatchMix | None) -> int:
    """Batches in one pass over a split of `n` (see batch_indices)."""
    if mixes(n, train, mix):
        return mix.num_batches(batch_size)
    return num_batches(n, batch_size, train)


def _cycled(start: int, stop: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` indices from [start, stop): shuffled passes over the range, end to end."""
    passes = -(-length // (stop - start))
    return torch.cat([start + torch.randperm(stop - start, generator=generator,
                                             device=generator.device)
                      for _ in range(passes)])[:length]


def drops_last(n: int, batch_size: int, train: bool) -> bool:
    """Training drops the ragged last batch (BN statistics), unless it is the only batch."""
    return train and n >= batch_size


def num_batches(n: int, batch_size: int, train: bool) -> int:
    return n // batch_size if drops_last(n, batch_size, train) else math.ceil(n / batch_size)


class EpochBatches:
    """Batches of one pass over a split, in an order fixed by (seed, epoch)."""

    def __init__(self, batch_size: int, device: torch.device, seed: int, train: bool,
                 mix: BatchMix | None = None, with_indices: bool = False):
        self.batch_size = batch_size
        self.with_indices = with_indices  # yield each image's index in the split too
        self.device = device
        self.seed = seed
        self.train = train
        self.mix = mix
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class DeviceLoader(EpochBatches):
    """`ranks=(rank, world)`: every rank draws the whole global batch, augmentation included
    (cheap on the device), and keeps its slice, so the ranks together see exactly the
    single-process batches."""

    def __init__(self, split: TensorSplit, batch_size: int, device: torch.device, seed: int,
                 train: bool, crop_padding: int = 0, hflip: bool = False,
                 ranks: tuple[int, int] = (0, 1), mix: BatchMix | None = None,
                 with_indices: bool = False):
        super().__init__(batch_size, device, seed, train, mix, with_indices)
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.rank, self.world = ranks

    def __len__(self) -> int:
        return pass_length(len(self.labels), self.batch_size, self.train, self.mix)

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch))
        for index in batch_indices(len(self.labels), self.batch_size, self.train, g, self.mix):
            images = self.images[index]
            labels = self.labels[index]
            if self.train:
                images = random_crop_flip(images, self.crop_padding, self.hflip, g)
            if self.world > 1:
                share = len(index) // self.world
                mine = slice(self.rank * share, (self.rank + 1) * share)
                images, labels, index = images[mine], labels[mine], index[mine]
            yield (unit_pixels(images), labels, index) if self.with_indices else (
                unit_pixels(images), labels)


class DatasetLoader(EpochBatches):
    """The DataLoader path for large images, with the same interface as DeviceLoader."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int,
                 train: bool, num_workers: int, ranks: tuple[int, int] = (0, 1),
                 mix: BatchMix | None = None, with_indices: bool = False):
        super().__init__(batch_size, device, seed, train, mix, with_indices)
        self.dataset = WithIndices(dataset) if with_indices else dataset
        self.num_workers = num_workers
        self.rank, self.world = ranks

    def __len__(self) -> int:
        return pass_length(len(self.dataset), self.batch_size, self.train, self.mix)

    def __iter__(self) -> Iterator[Batch]:
        drop_last = drops_last(len(self.dataset), self.batch_size, self.train)
        seed = epoch_seed(self.seed, self.epoch)
        if mixes(len(self.dataset), self.train, self.mix):  # rank r: its slice of each batch
            batches = batch_indices(len(self.dataset), self.batch_size, self.train,
                                    torch.Generator().manual_seed(seed), self.mix)
            options = {"batch_sampler": [
                b[self.rank * (len(b) // self.world):(self.rank + 1) * (len(b) // self.world)]
                .tolist() for b in batches]}
            drop_last = False  # the batches are given
        elif self.world > 1:  # rank r takes places r, r + world, ... of each global batch
            sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True,
                                         seed=seed, drop_last=True)
            options = {"sampler": sampler, "batch_size": self.batch_size // self.world}
        else:
            options = {"shuffle": self.train, "batch_size": self.batch_size,
                       "generator": torch.Generator().manual_seed(seed)}
        loader = DataLoader(self.dataset, drop_last=drop_last, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            **options)
        for batch in loader:
            yield tuple(part.to(self.device, non_blocking=True) for part in batch)


class WithIndices(Dataset):
    """`dataset`'s examples with their index appended, for the DataLoader to batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)


def make_loader(split: TensorSplit | Dataset, batch_size: int, run: Run, train: bool,
                augment: bool = True, shard: bool = False, mix: BatchMix | None = None,
                with_indices: bool = False) -> DeviceLoader | DatasetLoader:
    """Batches on the run's device, in an order seeded by the run's seed. `augment=False`:
    training batches without the data set's crop/flip, for methods that distort batches
    themselves. `shard=True`: this rank's part under torch.distributed (`batch_size` stays the
    global batch when training). `mix`: training batches drawn from two parts at a ratio.
    `with_indices`: each batch carries its images' indices in `split` (the rank's share)."""
    dataset_cfg = run.cfg.dataset
    sharded = shard and distributed.world_size() > 1
    ranks = (distributed.rank(), distributed.world_size()) if sharded and train else (0, 1)
    if sharded and not train:
        split = take(split, distributed.shard_indices(len(split)))
    if isinstance(split, TensorSplit):
        return DeviceLoader(split, batch_size, run.device, run.seed, train,
                            crop_padding=dataset_cfg.crop_padding if augment else 0,
                            hflip=dataset_cfg.hflip and augment, ranks=ranks, mix=mix,
                            with_indices=with_indices)
    if not augment:
        raise ConfigError(f"this method distorts its own batches, which needs an in-memory data "
                          f"set (cifar10, cifar100, svhn, cinic10, digits), not "
                          f"{dataset_cfg.name}: choose one of those")
    return DatasetLoader(split, batch_size, run.device, run.seed, train, dataset_cfg.num_workers,
                         ranks, mix, with_indices)
