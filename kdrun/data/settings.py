"""The settings every data set has (conf/config.yaml's `dataset:` block plus the data set's own
YAML). A data set with keys of its own subclasses them in its module (`Settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from kdrun.checks import require


@dataclass
class DatasetSettings:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    num_classes: int = MISSING
    image_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    crop_padding: int = MISSING
    hflip: bool = MISSING
    test_fraction: float = MISSING
    split_seed: int = MISSING
    train_subset: int | None = None
    test_subset: int | None = None
    samples: int = MISSING
    num_workers: int = MISSING
    test_set: str | None = None  # test on this data set's test split instead (same classes)
    val_size: int = 0  # training images held out as a validation split (0: none)

    def __post_init__(self) -> None:
        require(self.num_classes >= 2, "dataset.num_classes", self.num_classes, "use >= 2")
        require(0 < self.test_fraction < 1, "dataset.test_fraction", self.test_fraction,
                "it must lie in (0, 1)")
        require(self.image_size >= 1, "dataset.image_size", self.image_size, "use >= 1")
        require(self.crop_padding >= 0, "dataset.crop_padding", self.crop_padding, "use >= 0")
        require(self.val_size >= 0, "dataset.val_size", self.val_size,
                "use >= 0 (0: no validation split)")
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None:
                require(value >= 1, f"dataset.{key}", value,
                        "use >= 1, or null for the whole split")
