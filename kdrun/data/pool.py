"""Synthetic image pools (data-free distillation): the images (uint8, or the optimised float32
pixels as they are), labels and where they came from in one file, plus a PNG grid to look at (a
row of images per class, labelled) - for viewing only - so a pool made once can train many
students."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from kdrun.data.types import TensorSplit
from kdrun.errors import DataNotFoundError
from kdrun.runtime import distributed
from kdrun.runtime.checkpoint import load, save_atomic

GRID_CLASSES = 10  # rows of the grid
GRID_PER_CLASS = 8  # images in a row


def save_pool(path: Path, split: TensorSplit, classes: list[str], meta: dict[str, Any]) -> Path:
    """Writes the pool and `<name>.png` (the grid); returns the PNG."""
    save_atomic({"images": split.images.cpu(), "labels": split.labels.cpu(),
                 "classes": list(classes), "meta": meta}, path)
    grid = path.with_suffix(".png")
    if distributed.is_main():
        title = f"{len(split.labels):,} images synthesised" + "".join(
            f", {key} {meta[key]}" for key in ("teacher", "iterations") if key in meta)
        save_grid(split, classes, grid, title)
    return grid


def viewable(image: torch.Tensor) -> torch.Tensor:
    """One pool image as H x W x C for imshow: uint8 as it is; float pixels, which may lie
    beyond [0, 1], scaled to its own minimum and maximum (as NVlabs' code saves its PNGs)."""
    if image.dtype != torch.uint8:
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image.permute(1, 2, 0).cpu()


def save_grid(split: TensorSplit, classes: list[str], path: Path, title: str) -> None:
    """The first GRID_PER_CLASS images of each of the first GRID_CLASSES classes, a row per
    class named at its left, pixels shown without smoothing."""
    labels = split.labels.cpu()
    rows = [c for c in range(len(classes)) if (labels == c).any()][:GRID_CLASSES]
    fig, axes = plt.subplots(len(rows), GRID_PER_CLASS, squeeze=False,
                             figsize=(0.8 * GRID_PER_CLASS + 1.2, 0.8 * len(rows) + 0.6))
    for r, c in enumerate(rows):
        chosen = (labels == c).nonzero().squeeze(1)[:GRID_PER_CLASS]
        for j, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if j < len(chosen):
                ax.imshow(viewable(split.images[chosen[j]]).numpy(), interpolation="nearest")
        axes[r][0].text(-0.15, 0.5, classes[c], transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def load_pool(path: Path) -> tuple[TensorSplit, list[str], dict[str, Any]]:
    if not path.is_file():
        raise DataNotFoundError(f"no synthetic pool at {path}: give dataset.path=<run dir>/"
                                "synthetic/pool.pt of a data-free run (method=deepinversion)")
    stored = load(path)
    return (TensorSplit(stored["images"], stored["labels"]), stored["classes"],
            stored.get("meta", {}))
