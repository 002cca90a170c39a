"""One loader per data set, each reading the official on-disk format, and any of them also
reading a plain ImageFolder tree (root/train/<class>/..., root/test/<class>/...)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from kdrun.data.augment import center_crop_transform, resized_crop_transform
from kdrun.data.image_folder import is_image_folder, read_image_folder
from kdrun.data.pool import load_pool
from kdrun.data.types import ImageData, TensorSplit, holdout_split, subset
from kdrun.errors import ConfigError, DataNotFoundError
from kdrun.registry import Registry

Loader = Callable[[DictConfig, Path, Path], ImageData]  # (dataset cfg, root, cache dir)
DATASETS: Registry[Loader] = Registry("data set")
TEST_FOLDER_NAMES = ("test", "val")


def load_dataset(cfg: DictConfig, cache_dir: str) -> ImageData:
    """The configured data set, with the configured subsets, its class count checked."""
    loader = DATASETS.get(cfg.name, key="dataset.name")
    data = loader(cfg, Path(cfg.root).expanduser(), Path(cache_dir).expanduser() / "data")
    if len(data.classes) != cfg.num_classes:
        raise ConfigError(f"dataset.num_classes={cfg.num_classes} but the data at {cfg.root} has "
                          f"{len(data.classes)} classes: set dataset.num_classes="
                          f"{len(data.classes)}")
    data.train = subset(data.train, cfg.train_subset, cfg.split_seed)
    data.test = subset(data.test, cfg.test_subset, cfg.split_seed + 1)
    return data


def named_dataset_cfg(name: str, root: str | None, base: DictConfig) -> DictConfig:
    """conf/dataset/<name>.yaml over the run's data-set settings, at the run's image size."""
    path = files("kdrun.conf").joinpath("dataset", f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"{name} is not a data set: choose one of conf/dataset/")
    cfg = OmegaConf.merge(base, OmegaConf.load(str(path)))
    cfg.image_size = base.image_size
    cfg.train_subset, cfg.test_subset = None, None
    if root is not None:
        cfg.root = root
    return cfg


def _image_folder_data(root: Path, image_size: int, cache_dir: Path) -> ImageData | None:
    """root/train and root/test (or root/val) class folders, if that is what root holds."""
    test_dir = next((root / n for n in TEST_FOLDER_NAMES if is_image_folder(root / n)), None)
    if not is_image_folder(root / "train") or test_dir is None:
        return None
    train, classes = read_image_folder(root / "train", image_size, cache_dir)
    test, test_classes = read_image_folder(test_dir, image_size, cache_dir)
    if test_classes != classes:
        raise DataNotFoundError(f"{root}/train and {test_dir} have different class folders: "
                                "both must hold one folder per class, with the same names")
    return ImageData(train, test, classes)


def _missing(name: str, root: Path, looked_for: str, how: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name} not found in {root} (looked for {looked_for}, or train/ and test/ class "
        f"folders): {how}; or point dataset.root (or $KDRUN_DATA) at the folder that holds it")


# --- CIFAR-10 / CIFAR-100: the python pickles torchvision downloads -------------------------

def _read_cifar_batches(folder: Path, files: list[str], label_key: str) -> TensorSplit:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))


def _cifar_loader(title: str, folder_name: str, train_files: list[str], test_files: list[str],
                  label_key: str, meta_file: str, names_key: str, torchvision_name: str) -> Loader:
    def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
        data = _image_folder_data(root, cfg.image_size, cache_dir)
        if data is not None:
            return data
        folder = root / folder_name
        if not folder.is_dir() and cfg.download:
            import torchvision.datasets

            getattr(torchvision.datasets, torchvision_name)(str(root), download=True)
        if not all((folder / f).is_file() for f in train_files + test_files + [meta_file]):
            raise _missing(title, root, f"{folder_name}/",
                           "download it with dataset.download=true")
        with open(folder / meta_file, "rb") as f:
            classes = pickle.load(f, encoding="latin1")[names_key]
        train = _read_cifar_batches(folder, train_files, label_key)
        test = _read_cifar_batches(folder, test_files, label_key)
        return ImageData(train, test, list(classes))

    return load


DATASETS.register("cifar10")(_cifar_loader(
    "CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
    "labels", "batches.meta", "label_names", "CIFAR10"))
DATASETS.register("cifar100")(_cifar_loader(
    "CIFAR-100", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
    "fine_label_names", "CIFAR100"))


# --- SVHN: the cropped-digits .mat files ------------------------------------------------------

@DATASETS.register("svhn")
def load_svhn(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    data = _image_folder_data(root, cfg.image_size, cache_dir)
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
            raise _missing("SVHN", root, "train_32x32.mat and test_32x32.mat",
                           "download it with dataset.download=true")
        mat = loadmat(path)
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1)) % 10  # '10' is digit 0
        splits[split] = TensorSplit(images, labels)
    return ImageData(splits["train"], splits["test"], [str(d) for d in range(10)])


# --- CINIC-10 and ImageNet: ImageFolder trees in their official layout -------------------------

@DATASETS.register("cinic10")
def load_cinic10(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    data = _image_folder_data(root, cfg.image_size, cache_dir)
    if data is None:
        raise _missing("CINIC-10", root, "train/ valid/ test/ class folders",
                       "download CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 "
                       "and unpack it there")
    return data


@DATASETS.register("imagenet")
def load_imagenet(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    """Large images stay on disk and go through DataLoader workers with torchvision transforms."""
    from torchvision import datasets

    test_dir = next((root / n for n in TEST_FOLDER_NAMES if is_image_folder(root / n)), None)
    if not is_image_folder(root / "train") or test_dir is None:
        raise _missing("ImageNet", root, "train/ and val/ class folders (ILSVRC-2012 layout)",
                       "get it from https://image-net.org (it cannot be downloaded automatically)")
    train = datasets.ImageFolder(str(root / "train"),
                                 transform=resized_crop_transform(cfg.image_size, cfg.hflip))
    test = datasets.ImageFolder(str(test_dir), transform=center_crop_transform(cfg.image_size))
    return ImageData(train, test, train.classes)


# --- Data sets that need no download ------------------------------------------------------------

def _to_rgb_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float images in [0, 1] (N x C x h x w) -> uint8 RGB at the model's input size."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@DATASETS.register("digits")
def load_digits(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (UCI), upsampled, with a seeded split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    full = TensorSplit(_to_rgb_uint8(images, cfg.image_size), torch.tensor(bunch.target))
    train, test = holdout_split(full, cfg.test_fraction, cfg.split_seed)
    return ImageData(train, test, [str(d) for d in range(10)])


@DATASETS.register("synthetic")
def load_synthetic(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    """Learnable class-conditional images for tests: a smooth random prototype per class plus
    per-image noise, generated from `split_seed`."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    prototypes = torch.rand(cfg.num_classes, 3, 4, 4, generator=g)
    prototypes = F.interpolate(prototypes, size=(cfg.image_size,) * 2, mode="bilinear",
                               align_corners=False)
    labels = torch.arange(cfg.samples) % cfg.num_classes
    noise = 0.15 * torch.randn(cfg.samples, 3, cfg.image_size, cfg.image_size, generator=g)
    full = TensorSplit(_to_rgb_uint8(prototypes[labels] + noise, cfg.image_size), labels)
    train, test = holdout_split(full, cfg.test_fraction, cfg.split_seed)
    return ImageData(train, test, [f"class{i}" for i in range(cfg.num_classes)])


@DATASETS.register("synthetic_pool")
def load_synthetic_pool(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    """Training images synthesised by a data-free run (`dataset.path`), tested on the real
    test set of `dataset.test_set` read from `dataset.root`."""
    pool, classes, _ = load_pool(Path(cfg.path).expanduser())
    if pool.images.shape[-1] != cfg.image_size:
        raise ConfigError(f"the pool's images are {pool.images.shape[-1]} pixels wide but "
                          f"dataset.image_size={cfg.image_size}: set dataset.image_size="
                          f"{pool.images.shape[-1]}")
    real_cfg = named_dataset_cfg(cfg.test_set, cfg.root, base=cfg)
    real = DATASETS.get(real_cfg.name)(real_cfg, root, cache_dir)
    if real.classes != classes:
        raise DataNotFoundError(f"the pool's classes ({', '.join(classes[:3])}, ...) are not "
                                f"those of {cfg.test_set} at {root}: set dataset.test_set to "
                                "the data set the pool's teacher was trained on")
    return ImageData(pool, real.test, classes)
