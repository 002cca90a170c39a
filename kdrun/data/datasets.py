"""Reading the configured data set: its settings checked against what the data set accepts,
its splits loaded (the test split from `test_set` when one is named), a validation split held
out of the training images (`val_size`), subsets taken, the class count checked. The data sets
themselves live in kdrun/data/sets/, one module each."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.checks import typed_settings
from kdrun.data.sets import DATASETS
from kdrun.data.settings import DatasetSettings
from kdrun.data.types import ImageData, hold_out, subset
from kdrun.errors import ConfigError, DataNotFoundError


def dataset_settings(cfg: DictConfig) -> DatasetSettings:
    """The data set's settings, typed and checked (ConfigError: one line)."""
    module = DATASETS.get(cfg.get("name"), key="dataset.name")
    if cfg.get("test_set") is not None:
        DATASETS.get(cfg.test_set, key="dataset.test_set")
    return typed_settings(cfg, getattr(module, "Settings", DatasetSettings), "dataset",
                          f"data set {cfg.name}", f"conf/dataset/{cfg.name}.yaml")


def load_dataset(cfg: DictConfig, cache_dir: str) -> ImageData:
    """The configured data set, with the configured subsets, its class count checked."""
    data = _read(cfg, cache_dir)
    if cfg.get("test_set") is not None:
        real = _read(named_dataset_cfg(cfg.test_set, cfg.root, base=cfg), cache_dir)
        if real.classes != data.classes:
            raise DataNotFoundError(f"the classes of {cfg.name} ({', '.join(data.classes[:3])}, "
                                    f"...) are not those of {cfg.test_set} at {cfg.root}: set "
                                    "dataset.test_set to a data set with the same classes")
        data.test = real.test
    if len(data.classes) != cfg.num_classes:
        raise ConfigError(f"dataset.num_classes={cfg.num_classes} but the data at {cfg.root} has "
                          f"{len(data.classes)} classes: set dataset.num_classes="
                          f"{len(data.classes)}")
    if cfg.val_size:
        if cfg.val_size >= len(data.train):
            raise ConfigError(f"dataset.val_size={cfg.val_size} leaves no training images (the "
                              f"training split has {len(data.train)}): hold out fewer")
        data.train, data.val = hold_out(data.train, cfg.val_size, cfg.split_seed + 2)
    data.train = subset(data.train, cfg.train_subset, cfg.split_seed)
    data.test = subset(data.test, cfg.test_subset, cfg.split_seed + 1)
    return data


def _read(cfg: DictConfig, cache_dir: str) -> ImageData:
    module = DATASETS.get(cfg.name, key="dataset.name")
    return module.load(cfg, Path(cfg.root).expanduser(), Path(cache_dir).expanduser() / "data")


def named_dataset_cfg(name: str, root: str | None, base: DictConfig) -> DictConfig:
    """conf/dataset/<name>.yaml over the run's data-set settings, at the run's image size."""
    path = files("kdrun.conf").joinpath("dataset", f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"{name} is not a data set: choose one of conf/dataset/")
    cfg = OmegaConf.merge(base, OmegaConf.load(str(path)))
    cfg.image_size = base.image_size
    cfg.train_subset, cfg.test_subset, cfg.test_set, cfg.val_size = None, None, None, 0
    if root is not None:
        cfg.root = root
    return cfg
