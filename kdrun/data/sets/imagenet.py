"""ImageNet (ILSVRC-2012): large images stay on disk and go through DataLoader workers with
torchvision transforms."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.data.augment import center_crop_transform, resized_crop_transform
from kdrun.data.formats import missing, test_folder
from kdrun.data.image_folder import is_image_folder
from kdrun.data.types import ImageData


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    from torchvision import datasets

    test_dir = test_folder(root)
    if not is_image_folder(root / "train") or test_dir is None:
        raise missing("ImageNet", root, "train/ and val/ class folders (ILSVRC-2012 layout)",
                      "get it from https://image-net.org (it cannot be downloaded automatically)")
    train = datasets.ImageFolder(str(root / "train"),
                                 transform=resized_crop_transform(cfg.image_size, cfg.hflip))
    test = datasets.ImageFolder(str(test_dir), transform=center_crop_transform(cfg.image_size))
    return ImageData(train, test, train.classes)
