"""CINIC-10 (Darlow et al., arXiv 1810.03505): class folders in its official layout."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.data.formats import image_folder_data, missing
from kdrun.data.types import ImageData


def load(cfg: DictConfig, root: Path, cache_dir: Path) -> ImageData:
    data = image_folder_data(root, cfg.image_size, cache_dir)
    if data is None:
        raise missing("CINIC-10", root, "train/ valid/ test/ class folders",
                      "download CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 "
                      "and unpack it there")
    return data
