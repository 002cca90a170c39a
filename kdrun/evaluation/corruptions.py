"""Accuracy under common corruptions (Hendrycks & Dietterich, arXiv 1903.12261), on the suite's
seeded subset of the test set: generated on the fly (corruption_ops.py, 9 of CIFAR-10-C's 15),
and read from the released CIFAR-10-C / CIFAR-100-C files when `released_root` is given (one
<corruption>.npy per corruption, N x 32 x 32 x 3 uint8 holding severities 1..5 one after the
other, and labels.npy) - the same seeded subset of each severity's images, which are the test
set's images in its official order (the same images the generated suite corrupts when the test
set is read in that order, as CIFAR's pickles are). Keys (percent): corrupt/<name>/s<k>/acc and
corrupt/mean_acc (generated); corrupt/released/<name>/s<k>/acc and corrupt/released/mean_acc."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING, DictConfig

from kdrun.checks import require
from kdrun.data import ImageData, TensorSplit
from kdrun.data.types import subset
from kdrun.errors import DataNotFoundError
from kdrun.evaluation.base import Evaluation, Subject
from kdrun.evaluation.corruption_ops import CORRUPTIONS, corrupt

# The files of the released CIFAR-10-C / CIFAR-100-C (the benchmark's 15, then its 4 extra)
RELEASED = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
            "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
            "elastic_transform", "pixelate", "jpeg_compression",
            "speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = 5


@dataclass
class Settings:
    names: list[str] = MISSING  # generated on the fly
    severities: list[int] = MISSING  # 1..5, for both
    released_root: str | None = MISSING  # folder of the released .npy files (null: none)
    released: list[str] = MISSING  # the released files read from it

    def __post_init__(self):
        for name in self.names:
            require(name in CORRUPTIONS, "eval.corruptions.names", name,
                    f"choose from {', '.join(CORRUPTIONS)}")
        require(all(1 <= s <= SEVERITIES for s in self.severities), "eval.corruptions.severities",
                self.severities, "severities are 1..5")
        for name in self.released:
            require(name in RELEASED, "eval.corruptions.released", name,
                    f"the released files are {', '.join(RELEASED)}")


class Corruptions(Evaluation):
    Settings = Settings
    prefixes = ("corrupt/",)

    def load(self, data: ImageData, dataset_cfg: DictConfig, cache_dir: str) -> None:
        """The released files' presence and shapes, checked before training."""
        self.root = None
        if self.settings.released_root is None or not self.settings.released:
            return
        root = Path(self.settings.released_root).expanduser()
        labels = root / "labels.npy"
        wanted = [root / f"{name}.npy" for name in self.settings.released]
        absent = [p.name for p in [labels, *wanted] if not p.is_file()]
        if absent:
            raise DataNotFoundError(
                f"eval.corruptions.released_root: {', '.join(absent[:3])} not found in {root}: "
                "unpack CIFAR-10-C.tar or CIFAR-100-C.tar (https://zenodo.org/records/2535967, "
                "https://zenodo.org/records/3555552) and point released_root at its folder")
        classes = np.unique(np.load(labels))
        if len(classes) != dataset_cfg.num_classes or classes.max() >= dataset_cfg.num_classes:
            raise DataNotFoundError(
                f"eval.corruptions.released_root: {labels} holds {len(classes)} classes and "
                f"{dataset_cfg.name} has {dataset_cfg.num_classes}: give the folder of the "
                "released files for this data set (CIFAR-100-C for CIFAR-100)")
        n = len(np.load(labels, mmap_mode="r"))
        size = dataset_cfg.image_size
        for path in wanted:
            shape = np.load(path, mmap_mode="r").shape
            if shape != (n, size, size, 3) or n % SEVERITIES:
                raise DataNotFoundError(
                    f"eval.corruptions.released_root: {path} holds images of shape {shape}, "
                    f"not ({n}, {size}, {size}, 3) as labels.npy and dataset.image_size say: "
                    "give the folder of the released files for this data set")
        self.root = root

    def measure(self, subject: Subject) -> dict[str, float]:
        s = self.settings
        model, run = subject.model, subject.run
        model.eval()
        results = {}
        for i, name in enumerate(s.names):
            for severity in s.severities:
                # one stream per (corruption, severity), read on through the batches
                g = torch.Generator(device=run.device).manual_seed(
                    run.seed * 1000 + i * 10 + severity)
                damage = functools.partial(corrupt, name=name, severity=severity, generator=g)
                results[f"corrupt/{name}/s{severity}/acc"] = _accuracy(
                    model, subject.attacked_loader, run, damage)
        if results:
            results["corrupt/mean_acc"] = sum(results.values()) / len(results)
        released = {}
        labels = torch.from_numpy(np.load(self.root / "labels.npy")) if self.root else None
        for name in s.released if self.root is not None else []:
            images = np.load(self.root / f"{name}.npy", mmap_mode="r")
            per = len(labels) // SEVERITIES
            for severity in s.severities:
                part = slice((severity - 1) * per, severity * per)
                split = TensorSplit(torch.from_numpy(np.ascontiguousarray(
                    images[part].transpose(0, 3, 1, 2))), labels[part])
                chosen = subset(split, subject.suite.subset, run.seed)
                released[f"corrupt/released/{name}/s{severity}/acc"] = _accuracy(
                    model, subject.loader(chosen), run)
        if released:
            released["corrupt/released/mean_acc"] = sum(released.values()) / len(released)
        return {**results, **released}

    @classmethod
    def summary_lines(cls, results: dict[str, Any]) -> list[str]:
        return [f"  mean corruption acc ({what})  {results[key]:.2f} %"
                for key, what in (("corrupt/mean_acc", "generated"),
                                  ("corrupt/released/mean_acc", "released files"))
                if key in results]

    @classmethod
    def label(cls, key: str) -> str:
        labels = {"corrupt/mean_acc": "corruption acc (generated)",
                  "corrupt/released/mean_acc": "corruption acc (released)"}
        return labels.get(key, key)

    @classmethod
    def report_metrics(cls, keys: list[str]) -> list[str]:
        return [k for k in ("corrupt/mean_acc", "corrupt/released/mean_acc") if k in keys]


@torch.inference_mode()
def _accuracy(model, loader, run, damage=None) -> float:
    """Percent right on the loader's images (damaged by `damage`), counted on the device and
    read once."""
    correct, seen = torch.zeros((), dtype=torch.long, device=run.device), 0
    for images, labels in loader:
        damaged = damage(images) if damage is not None else images
        with run.autocast():
            correct += (model(damaged).argmax(dim=1) == labels).sum()
        seen += len(labels)
    return 100 * correct.item() / seen
