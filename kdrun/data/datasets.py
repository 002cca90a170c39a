"""Reading the configured data set: its settings checked against what the data set accepts,
its splits loaded (the test split from `test_set` when one is named), a validation split held
out of the training images (`val_size`), subsets taken, the class count checked. The data sets
themselves live in kdrun/data/sets/, one module each."""

from __future__ import annotations

import dataclasses
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.checks import typed_settings
from kdrun.data.sets import DATASETS
from kdrun.data.settings import DatasetSettings
from kdrun.data.types import ImageData, hold_out, subset
from kdrun.errors import ConfigError, DataNotFoundError


def dataset_settings(cfg: DictConfig, key: str = "dataset") -> DatasetSettings:
    """The data set's settings, typed and checked (ConfigError: one line); `key` is where the
    config names the data set (dataset, or a role such as eval.ood.svhn)."""
    module = DATASETS.get(cfg.get("name"), key=f"{key}.name")
    if key == "dataset" and getattr(module, "OOD_ONLY", False):
        raise ConfigError(f"dataset={cfg.name} is an out-of-distribution set only, read whole "
                          f"and unlabelled: name it under eval.ood.near or eval.ood.far")
    if cfg.get("test_set") is not None:  # a known data set that can test, in its own settings
        named_dataset_cfg(cfg.test_set, cfg.root, base=cfg, role="dataset.test_set")
    return typed_settings(cfg, getattr(module, "Settings", DatasetSettings), key,
                          f"data set {cfg.name}", f"conf/dataset/{cfg.name}.yaml")


def load_dataset(cfg: DictConfig, cache_dir: str) -> ImageData:
    """The configured data set, with the configured subsets, its class count checked."""
    data = _read(cfg, cache_dir)
    if cfg.get("test_set") is not None:
        real = load_named_dataset(cfg.test_set, cfg.root, cfg, "dataset.test_set", cache_dir)
        if real.classes != data.classes:
            raise DataNotFoundError(f"the classes of {cfg.name} ({', '.join(data.classes[:3])}, "
                                    f"...) are not those of {cfg.test_set} at {cfg.root}: set "
                                    "dataset.test_set to a data set with the same classes")
        data.test = real.test
    if len(data.classes) != cfg.num_classes and not getattr(DATASETS.get(cfg.name), "OOD_ONLY",
                                                            False):
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


# The settings every data set has (DatasetSettings): the ones a data set named in another role
# takes from the run's data set, before its own YAML overrides them.
SHARED_KEYS = tuple(f.name for f in dataclasses.fields(DatasetSettings))


def named_dataset_cfg(name: str, root: str | dict | None, base: DictConfig,
                      role: str) -> DictConfig:
    """The data set `name` in a role beside the run's (`role`: dataset.test_set, eval.ood.svhn,
    method.unlabelled, ...): the run's shared settings (download, workers, image size), then
    conf/dataset/<name>.yaml with its own keys (SVHN's `extra`), the whole split, read from
    `root` (None: the YAML's; a mapping: `root` and any of the set's own settings, as
    {root: PATH, image_list: FILE}). Typed and checked like the run's data set: one line
    naming the role when something is wrong."""
    module = DATASETS.get(name, key=role)
    if getattr(module, "TRAINING_SET_ONLY", False):
        raise ConfigError(f"{role}: {name} can only be the training set (dataset={name}): "
                          "choose another data set here")
    if getattr(module, "OOD_ONLY", False) and not role.startswith("eval.ood."):
        raise ConfigError(f"{role}: {name} is an out-of-distribution set only: name it under "
                          f"eval.ood.near or eval.ood.far")
    path = files("kdrun.conf").joinpath("dataset", f"{name}.yaml")
    shared = {key: base[key] for key in SHARED_KEYS if key in base}
    cfg = OmegaConf.merge(OmegaConf.create(shared), OmegaConf.load(str(path)))
    cfg.image_size = base.image_size
    cfg.train_subset, cfg.test_subset, cfg.test_set, cfg.val_size = None, None, None, 0
    settings = dict(root) if isinstance(root, (dict, DictConfig)) else {"root": root}
    for key, value in settings.items():
        if key != "root" or value is not None:
            cfg[key] = value
    dataset_settings(cfg, key=role)
    return cfg


def load_named_dataset(name: str, root: str | dict | None, base: DictConfig, role: str,
                       cache_dir: str) -> ImageData:
    """The whole data set `name` in `role` (named_dataset_cfg); a missing one says which role
    asked for it."""
    cfg = named_dataset_cfg(name, root, base, role)
    try:
        return load_dataset(cfg, cache_dir)
    except DataNotFoundError as err:
        raise DataNotFoundError(f"{role}: {err}") from None
