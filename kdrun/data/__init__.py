"""Data sets (read from their official on-disk formats) and the loaders that batch them."""

from kdrun.data.datasets import DATASETS, load_dataset
from kdrun.data.device_loader import make_loader
from kdrun.data.types import ImageData, TensorSplit

__all__ = ["DATASETS", "ImageData", "TensorSplit", "load_dataset", "make_loader"]
