"""SVHN, the cropped digits: the official train_32x32.mat and test_32x32.mat files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from kdrun.data.formats import image_folder_data, missing
from kdrun.data.types import ImageData, TensorSplit


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    data = image_folder_data(root, cfg.image_size, cache_dir)
    if data is not None:
        return data
    from scipy.io import loadmat

    splits = {}
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if not path.is_file() and cfg.download:
            import torchvision.datasets

            torchvision.datasets.SVHN(str(root), split=split, download=True)
        if not path.is_file():
            raise missing("SVHN", root, "train_32x32.mat and test_32x32.mat",
                          "download it with dataset.download=true")
        mat = loadmat(path)
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1)) % 10  # '10' is digit 0
        splits[split] = TensorSplit(images, labels)
    return ImageData(splits["train"], splits["test"], [str(d) for d in range(10)])
