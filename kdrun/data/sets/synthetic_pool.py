"""Training images synthesised by a data-free run (`dataset.path`); the test split is the real
one of `dataset.test_set`, read from `dataset.root`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from kdrun.checks import require
from kdrun.data.pool import load_pool
from kdrun.data.settings import DatasetSettings
from kdrun.data.types import ImageData
from kdrun.errors import ConfigError

# Its images are one file (dataset.path) that no other role names: it cannot be an evaluation
# set, a test set or Noisy Student's unlabelled pool.
TRAINING_SET_ONLY = True


@dataclass
class Settings(DatasetSettings):
    path: str | None = None  # the pool file of a data-free run (required)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.path is not None and Path(self.path).expanduser().is_file(), "dataset.path",
                self.path, "give the pool file of a data-free run: <run dir>/synthetic/pool.pt")
        require(self.test_set not in (None, "synthetic_pool"), "dataset.test_set", self.test_set,
                "name the data set whose test set evaluates, e.g. cifar10 (read from "
                "dataset.root)")


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    pool, classes, _ = load_pool(Path(cfg.path).expanduser())
    if pool.images.shape[-1] != cfg.image_size:
        raise ConfigError(f"the pool's images are {pool.images.shape[-1]} pixels wide but "
                          f"dataset.image_size={cfg.image_size}: set dataset.image_size="
                          f"{pool.images.shape[-1]}")
    return ImageData(pool, None, classes)
