"""ImageFolder trees (root/<class>/<image>) decoded once into uint8 tensors and cached, so a
second run (or a sweep job) starts in a second instead of re-decoding 60k files."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdrun.data.types import TensorSplit
from kdrun.errors import CheckpointError, DataNotFoundError
from kdrun.runtime import checkpoint

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() for p in path.iterdir())


def list_images(root: Path, any_depth: bool = False) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class folders of `root` and their images, labelled by folder; `any_depth`: images
    anywhere below a class folder (Tiny ImageNet's <wnid>/images/), and those lying in root
    itself as one class named like root."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    pattern = "**/*" if any_depth else "*"
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((root / c).glob(pattern)) if f.suffix.lower() in IMAGE_SUFFIXES]
    loose = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) \
        if any_depth else []
    if loose:
        files += [(f, len(classes)) for f in loose]
        classes.append(root.name)
    return classes, files


def read_image_folder(root: Path, image_size: int, cache_dir: Path,
                      any_depth: bool = False) -> tuple[TensorSplit, list[str]]:
    classes, files = list_images(root, any_depth)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return decode_cached(root, classes, files, image_size, cache_dir), classes


def decode_cached(root: Path, classes: list[str], files: list[tuple[Path, int]],
                  image_size: int, cache_dir: Path) -> TensorSplit:
    """`files` (path, label) decoded once, then read from the cache."""
    cache = cache_dir / f"{_fingerprint(root, files, image_size)}.pt"
    if cache.is_file():
        try:
            stored = checkpoint.load(cache)
            return TensorSplit(stored["images"], stored["labels"])
        except (CheckpointError, KeyError, TypeError) as err:
            log.warning("the decoded copy %s is damaged (%s); decoding the images again",
                        cache, str(err).splitlines()[0][:120])
    log.info("decoding %d images under %s (once; cached in %s)", len(files), root, cache_dir)
    images = read_images([path for path, _ in files], image_size).images
    split = TensorSplit(images, torch.tensor([label for _, label in files]))
    checkpoint.save_atomic({"images": split.images, "labels": split.labels,
                            "classes": classes}, cache)
    return split


def list_image_files(root: Path) -> list[Path]:
    """Every image under `root`, at any depth, in a fixed order (no classes: unlabelled)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataNotFoundError(f"no images (.jpg, .png, ...) under {root}: point "
                                "method.unlabelled_root at a folder of images")
    return files


def read_images(files: list[Path], image_size: int) -> TensorSplit:
    """Small images decoded into memory (in threads), labelled 0."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = list(pool.map(lambda f: _decode(f, image_size), files))
    return TensorSplit(torch.stack(images), torch.zeros(len(files), dtype=torch.long))


class ImageFiles(Dataset):
    """Large images read from disk one at a time (DataLoader path), labelled 0."""

    def __init__(self, files: list[Path], transform=None):
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), 0


def _decode(path: Path, image_size: int) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def _fingerprint(root: Path, files: list[tuple[Path, int]], image_size: int) -> str:
    """Changes when the tree's files, their sizes or the target size change."""
    h = hashlib.sha256(f"{root.resolve()}|{image_size}".encode())
    for f, label in files:
        h.update(f"{f.name}|{label}|{f.stat().st_size}".encode())
    return h.hexdigest()[:20]
