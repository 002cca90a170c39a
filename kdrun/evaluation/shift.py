"""Accuracy under distribution shift: data sets with the training set's classes, matched by
class name (CINIC-10 for a CIFAR-10 model). Key (percent): shift/<set>/acc."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from kdrun.data import ImageData, load_named_dataset, named_dataset_cfg
from kdrun.errors import ConfigError
from kdrun.evaluation.base import Evaluation, Subject


@dataclass
class Settings:
    sets: dict[str, str | None] = field(default_factory=dict)  # name: root (null: its YAML's)


def class_mapping(shift_classes: list[str], train_classes: list[str], name: str) -> torch.Tensor:
    """Shift-set label -> training label, matched by class name."""
    missing = [c for c in shift_classes if c not in train_classes]
    if missing:
        raise ConfigError(f"eval.shift.sets.{name}: its classes {missing[:5]} are not training "
                          "classes; a shift set must share the training label names (name it "
                          "under eval.ood instead)")
    return torch.tensor([train_classes.index(c) for c in shift_classes])


class Shift(Evaluation):
    Settings = Settings
    prefixes = ("shift/",)

    def check(self, cfg: DictConfig) -> None:
        for name, root in self.settings.sets.items():
            named_dataset_cfg(name, root, cfg.dataset, f"eval.shift.sets.{name}")

    def load(self, data: ImageData, dataset_cfg: DictConfig, cache_dir: str) -> None:
        self.sets = {}
        for name, root in self.settings.sets.items():
            shifted = load_named_dataset(name, root, dataset_cfg, f"eval.shift.sets.{name}",
                                         cache_dir)
            self.sets[name] = (shifted, class_mapping(shifted.classes, data.classes, name))

    @torch.inference_mode()
    def measure(self, subject: Subject) -> dict[str, float]:
        results = {}
        for name, (shifted, mapping) in self.sets.items():
            seen = subject.embed(shifted.test)
            predicted = seen.logits.argmax(dim=1)
            right = predicted == mapping.to(predicted.device)[seen.labels]
            results[f"shift/{name}/acc"] = 100 * right.float().mean().item()
        return results

    @classmethod
    def summary_lines(cls, results: dict[str, Any]) -> list[str]:
        return [f"  shift {key.split('/')[1]}  acc {results[key]:.2f} %"
                for key in sorted(k for k in results if cls.owns(k))]

    @classmethod
    def label(cls, key: str) -> str:
        return f"{key.split('/')[1]} acc"

    @classmethod
    def report_metrics(cls, keys: list[str]) -> list[str]:
        return sorted(k for k in keys if cls.owns(k))
