"""The evaluation protocol. An evaluation is one module of kdrun/evaluation/ that defines an
Evaluation subclass, plus conf/evaluation/<name>.yaml with its settings: what it measures
(`measure`) and everything about the results keys it owns - their summary lines with units,
their figure, their label and default column in `kdrun-report`. Nothing else reads its keys.
The suite hands each evaluation a Subject: the model and the passes several evaluations share
(the attacked subset, the test and training sets' logits and features), computed once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.checks import NoSettings, require
from kdrun.data import ImageData, make_loader
from kdrun.data.types import evaluation_view, subset
from kdrun.runtime.run import Run


@dataclass
class SuiteSettings:
    """The settings every evaluation shares (eval.<key>; the rest of eval are evaluations)."""
    calibration_bins: int  # equal-width confidence bins for calib/ece and the diagram
    subset: int | None  # test images attacked and corrupted (a seeded subset; null: all)
    batch_size: int  # images per batch of the evaluations
    plots: bool  # each evaluation's figure in <run dir>/plots (and in the loggers)
    teacher: bool  # evaluate the teacher too: teacher/<key> and vs_teacher/<key>

    def __post_init__(self):
        require(self.calibration_bins >= 1, "eval.calibration_bins", self.calibration_bins,
                "use >= 1")
        require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "use >= 1")
        if self.subset is not None:
            require(self.subset >= 1, "eval.subset", self.subset,
                    "use >= 1, or null for the test set")


@dataclass
class Embedding:
    """A split's logits (float32) and penultimate features, with its labels, in loader order."""
    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor


class Subject:
    """The model an evaluation measures, the run and its data, and the passes over the data
    that several evaluations need, each made once (cached)."""

    def __init__(self, model: nn.Module, data: ImageData, run: Run, suite: SuiteSettings):
        self.model, self.data, self.run, self.suite = model, data, run, suite
        self._train: dict[int | None, Embedding] = {}

    def loader(self, split, batch_size: int | None = None):
        return make_loader(split, batch_size or self.suite.batch_size, self.run, train=False)

    @functools.cached_property
    def attacked(self):
        """The seeded subset of the test set that attacks and corruptions share."""
        return subset(self.data.test, self.suite.subset, self.run.seed)

    @functools.cached_property
    def attacked_loader(self):
        return self.loader(self.attacked)

    @functools.cached_property
    def test(self) -> Embedding:
        """The whole test set in the clean evaluation's batches (so figures drawn from it
        agree with calib/ece to the digit)."""
        return self.embed(self.data.test, self.run.cfg.trainer.eval_batch_size)

    def train_set(self, size: int | None) -> Embedding:
        """The training images' embedding, read as the test set is (no augmentation), on a
        seeded subset of `size`."""
        if size not in self._train:
            train = evaluation_view(self.data.train, self.data.test)
            self._train[size] = self.embed(subset(train, size, self.run.seed))
        return self._train[size]

    @torch.inference_mode()
    def embed(self, split, batch_size: int | None = None) -> Embedding:
        self.model.eval()
        logits, features, labels = [], [], []
        for images, targets in self.loader(split, batch_size):
            with self.run.autocast():
                out, feats = self.model.forward_embedding(images)
            logits.append(out.float())
            features.append(feats.float())
            labels.append(targets)
        return Embedding(torch.cat(logits), torch.cat(features), torch.cat(labels))


class Evaluation:
    """One evaluation. `Settings`: its typed settings (values in conf/evaluation/<name>.yaml);
    `prefixes`: the results keys it owns start with one of them."""
    Settings: ClassVar[type] = NoSettings
    prefixes: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]  # its module's name, set when discovered

    def __init__(self, settings, suite: SuiteSettings):
        self.settings, self.suite = settings, suite

    def check(self, cfg: DictConfig) -> None:
        """Checks that need the whole config (the data set, the method), before any work."""

    def load(self, data: ImageData, dataset_cfg: DictConfig, cache_dir: str) -> None:
        """Read the data sets it needs when the run starts: a missing one stops the run in
        seconds, not after training."""

    def check_model(self, model: nn.Module) -> None:
        """What it needs of the model it will measure, checked before training."""

    def measure(self, subject: Subject) -> dict[str, float]:
        raise NotImplementedError

    def plot(self, results: dict[str, Any], subject: Subject, title: str) -> dict[str, Path]:
        """Its figures, written under <run dir>/plots: {results-style name: PNG path}."""
        return {}

    @classmethod
    def owns(cls, key: str) -> bool:
        return key.startswith(cls.prefixes)

    @classmethod
    def summary_lines(cls, results: dict[str, Any]) -> list[str]:
        """Its lines of the summary a run prints, from the keys it owns in `results`."""
        return []

    @classmethod
    def label(cls, key: str) -> str:
        """A key's column header in `kdrun-report`."""
        return key

    @classmethod
    def report_metrics(cls, keys: list[str]) -> list[str]:
        """Of the keys a sweep's runs have, those `kdrun-report` tabulates by default."""
        return []

    @classmethod
    def curves(cls, results: dict[str, Any]) -> dict[str, tuple[str, str, dict[float, float]]]:
        """Curves `kdrun-report` draws across a sweep: {name: (x label, title, {x: value})}."""
        return {}
