"""Learnable class-conditional images for tests: a smooth random prototype per class plus
per-image noise, generated from `split_seed`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from kdrun.data.formats import to_rgb_uint8
from kdrun.data.types import ImageData, TensorSplit, holdout_split

READS_ROOT = False  # the images are generated from split_seed: dataset.root is never read


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    g = torch.Generator().manual_seed(cfg.split_seed)
    prototypes = torch.rand(cfg.num_classes, 3, 4, 4, generator=g)
    prototypes = F.interpolate(prototypes, size=(cfg.image_size,) * 2, mode="bilinear",
                               align_corners=False)
    labels = torch.arange(cfg.samples) % cfg.num_classes
    noise = 0.15 * torch.randn(cfg.samples, 3, cfg.image_size, cfg.image_size, generator=g)
    full = TensorSplit(to_rgb_uint8(prototypes[labels] + noise, cfg.image_size), labels)
    train, test = holdout_split(full, cfg.test_fraction, cfg.split_seed)
    return ImageData(train, test, [f"class{i}" for i in range(cfg.num_classes)])
