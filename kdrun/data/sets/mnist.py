"""MNIST (LeCun et al., 1998): torchvision's files (MNIST/raw/*-idx?-ubyte under root), the
grey digits as RGB at dataset.image_size; OpenOOD's far-OOD set for CIFAR models."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.data.formats import fetch, missing, to_rgb_uint8
from kdrun.data.types import ImageData, TensorSplit

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_split(raw: Path, split: str, image_size: int) -> TensorSplit:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images, labels = FILES[split]
    grey = read_image_file(str(raw / images)).float()[:, None] / 255
    return TensorSplit(to_rgb_uint8(grey, image_size), read_label_file(str(raw / labels)).long())


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    raw = root / "MNIST" / "raw"
    if not (raw / FILES["test"][0]).is_file() and cfg.download:
        import torchvision.datasets

        fetch("MNIST", root, lambda: torchvision.datasets.MNIST(str(root), download=True))
    if not all((raw / name).is_file() for pair in FILES.values() for name in pair):
        raise missing("MNIST", root, "MNIST/raw/t10k-images-idx3-ubyte and the other three "
                      "files", "download it with dataset.download=true")
    return ImageData(read_split(raw, "train", cfg.image_size),
                     read_split(raw, "test", cfg.image_size), [str(d) for d in range(10)])
