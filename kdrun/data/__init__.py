"""Data sets (kdrun/data/sets/, one module each, read from their official on-disk formats) and
the loaders that batch them."""

from kdrun.data.datasets import (
    dataset_settings,
    load_dataset,
    load_named_dataset,
    named_dataset_cfg,
)
from kdrun.data.device_loader import BatchMix, make_loader
from kdrun.data.sets import DATASETS
from kdrun.data.types import ImageData, TensorSplit, split_labels

__all__ = ["DATASETS", "BatchMix", "ImageData", "TensorSplit", "dataset_settings", "load_dataset",
           "load_named_dataset", "make_loader", "named_dataset_cfg", "split_labels"]
