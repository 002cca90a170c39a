"""SVHN, the cropped digits: the official train_32x32.mat and test_32x32.mat files, and with
`extra` the 531,131 extra training images (extra_32x32.mat) that many SVHN papers add."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING, DictConfig

from kdrun.data.formats import fetch, image_folder_data, missing
from kdrun.data.settings import DatasetSettings
from kdrun.data.types import ImageData, TensorSplit


@dataclass
class Settings(DatasetSettings):
    extra: bool = MISSING  # train on train + extra


def read_split(root: Path, split: str, download: bool) -> TensorSplit:
    path = root / f"{split}_32x32.mat"
    if not path.is_file() and download:
        import torchvision.datasets

        fetch("SVHN", root, lambda: torchvision.datasets.SVHN(str(root), split=split,
                                                              download=True))
    if not path.is_file():
        raise missing("SVHN", root, f"{path.name}", "download it with dataset.download=true")
    from scipy.io import loadmat

    mat = loadmat(path)
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
    labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1)) % 10  # '10' is digit 0
    return TensorSplit(images, labels)


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    classes = [str(d) for d in range(10)]
    data = image_folder_data(root, cfg.image_size, cache_dir)
    if data is None:
        data = ImageData(read_split(root, "train", cfg.download),
                         read_split(root, "test", cfg.download), classes)
    if cfg.extra:
        extra = read_split(root, "extra", cfg.download)
        data.train = TensorSplit(torch.cat([data.train.images, extra.images]),
                                 torch.cat([data.train.labels, extra.labels]))
    return data
