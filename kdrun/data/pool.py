"""Synthetic image pools (data-free distillation): uint8 images, labels and where they came from
in one file, plus a PNG grid to look at, so a pool made once can train many students."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from kdrun.data.types import TensorSplit
from kdrun.errors import DataNotFoundError
from kdrun.runtime import distributed
from kdrun.runtime.checkpoint import load, save_atomic

GRID_IMAGES = 64


def save_pool(path: Path, split: TensorSplit, classes: list[str], meta: dict[str, Any]) -> Path:
    """Writes the pool and `<name>.png` (the first images, class by class); returns the PNG."""
    save_atomic({"images": split.images.cpu(), "labels": split.labels.cpu(),
                 "classes": list(classes), "meta": meta}, path)
    order = torch.argsort(split.labels[:GRID_IMAGES], stable=True)
    grid = path.with_suffix(".png")
    if distributed.is_main():
            save_image(split.images[:GRID_IMAGES][order].float() / 255, grid, nrow=8)
    return grid


def load_pool(path: Path) -> tuple[TensorSplit, list[str], dict[str, Any]]:
    if not path.is_file():
        raise DataNotFoundError(f"no synthetic pool at {path}: give dataset.path=<run dir>/"
                                "synthetic/pool.pt of a data-free run (method=deepinversion)")
    stored = load(path)
    return (TensorSplit(stored["images"], stored["labels"]), stored["classes"],
            stored.get("meta", {}))
