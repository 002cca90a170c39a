"""On-disk formats several data sets share: ImageFolder trees (root/train/<class>/...,
root/test/<class>/...), CIFAR's python pickles, and float images made in memory."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig

from kdrun.data.image_folder import decode_cached, is_image_folder, read_image_folder
from kdrun.data.settings import DatasetSettings
from kdrun.data.types import ImageData, TensorSplit
from kdrun.errors import DataNotFoundError

Loader = Callable[[DictConfig, Path, Path], ImageData]  # (dataset settings, root, cache dir)
TEST_FOLDER_NAMES = ("test", "val")


def test_folder(root: Path) -> Path | None:
    return next((root / n for n in TEST_FOLDER_NAMES if is_image_folder(root / n)), None)


def image_folder_data(root: Path, image_size: int, cache_dir: Path) -> ImageData | None:
    """root/train and root/test (or root/val) class folders, if that is what root holds."""
    test_dir = test_folder(root)
    if not is_image_folder(root / "train") or test_dir is None:
        return None
    train, classes = read_image_folder(root / "train", image_size, cache_dir)
    test, test_classes = read_image_folder(test_dir, image_size, cache_dir)
    if test_classes != classes:
        raise DataNotFoundError(f"{root}/train and {test_dir} have different class folders: "
                                "both must hold one folder per class, with the same names")
    return ImageData(train, test, classes)


def fetch(name: str, root: Path, download: Callable[[], object]) -> None:
    """Runs a torchvision download; a failure (no network, a bad mirror, a corrupt archive) is
    one line, not urllib's traceback."""
    try:
        download()
    except (OSError, RuntimeError) as err:
        reason = (str(err) or type(err).__name__).splitlines()[0][:120]
        raise DataNotFoundError(f"{name}: the download into {root} failed ({reason}): check the "
                                "network, or fetch the files by hand and point dataset.root at "
                                "them") from None


def missing(name: str, root: Path, looked_for: str, how: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name} not found in {root} (looked for {looked_for}, or train/ and test/ class "
        f"folders): {how}; or give the folder that holds it (dataset.root for the training set, "
        "the path after a role's key such as eval.ood.svhn=PATH, $KDRUN_DATA for all)")


def _read_cifar_batches(folder: Path, files: list[str], label_key: str) -> TensorSplit:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))


def cifar_loader(title: str, folder_name: str, train_files: list[str], test_files: list[str],
                 label_key: str, meta_file: str, names_key: str, torchvision_name: str) -> Loader:
    """A loader for CIFAR's python pickles as torchvision downloads them (or an ImageFolder
    tree at the same root)."""
    def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
        data = image_folder_data(root, cfg.image_size, cache_dir)
        if data is not None:
            return data
        folder = root / folder_name
        if not folder.is_dir() and cfg.download:
            import torchvision.datasets

            fetch(title, root, lambda: getattr(torchvision.datasets, torchvision_name)(
                str(root), download=True))
        if not all((folder / f).is_file() for f in train_files + test_files + [meta_file]):
            raise missing(title, root, f"{folder_name}/", "download it with dataset.download=true")
        with open(folder / meta_file, "rb") as f:
            classes = pickle.load(f, encoding="latin1")[names_key]
        train = _read_cifar_batches(folder, train_files, label_key)
        test = _read_cifar_batches(folder, test_files, label_key)
        return ImageData(train, test, list(classes))

    return load


@dataclass
class ImageTreeSettings(DatasetSettings):
    image_list: str | None = MISSING  # a file naming the images to read (null: all of them)


def image_tree_loader(title: str, how: str) -> Loader:
    """The loader of an evaluation-only set, read whole as both splits: every image under
    root, at any depth, labelled by its top-level folder; or, with `image_list`, the images a
    list file names - one per line, its first field a path relative to root (OpenOOD's
    benchmark_imglist files), so a benchmark's exact selection is read."""

    def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
        if not root.is_dir():
            raise missing(title, root, "a folder of images", how)
        if cfg.image_list is not None:
            listed = Path(cfg.image_list).expanduser()
            if not listed.is_file():
                raise DataNotFoundError(f"{title}: the image list {listed} does not exist: give "
                                        "the file that names the images (image_list)")
            files = [(root / line.split()[0], 0) for line in listed.read_text().splitlines()
                     if line.strip()]
            absent = next((path for path, _ in files if not path.is_file()), None)
            if absent is not None or not files:
                raise DataNotFoundError(f"{title}: {absent or 'no image'} named by {listed} is "
                                        f"not under {root}: give the folder its paths start from")
            split = decode_cached(root, [title], files, cfg.image_size, cache_dir)
            return ImageData(split, split, [title])
        try:
            split, classes = read_image_folder(root, cfg.image_size, cache_dir, any_depth=True)
        except FileNotFoundError:
            raise missing(title, root, "images (.jpg, .png, ...) at any depth", how) from None
        return ImageData(split, split, classes)

    return load


def to_rgb_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float images in [0, 1] (N x C x h x w) -> uint8 RGB at the model's input size."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
