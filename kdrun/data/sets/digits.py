"""scikit-learn's bundled 8x8 handwritten digits (UCI), upsampled, with a seeded split: real
data that needs no download (the offline quickstart)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from kdrun.data.formats import to_rgb_uint8
from kdrun.data.types import ImageData, TensorSplit, holdout_split

READS_ROOT = False  # the images ship inside scikit-learn: dataset.root is never read


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    full = TensorSplit(to_rgb_uint8(images, cfg.image_size), torch.tensor(bunch.target))
    train, test = holdout_split(full, cfg.test_fraction, cfg.split_seed)
    return ImageData(train, test, [str(d) for d in range(10)])
